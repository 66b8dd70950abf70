import type { GenerationOutput, GenerationTimings } from '@lora/runtime-onnx';
import { writeStdout } from '../stdout.js';
import type { GenerateCommandOptions } from './generate.js';
import { adapterSetLabel } from './generate-adapters.js';
import type { BatchRow } from './generate-batch.js';
import { generationHeader, jsonRow, jsonTimings } from './generate-json.js';

/**
 * Writes the results of `lora generate --batch` to stdout as they come, in one of three formats:
 * human text (`## row N (adapters)` blocks), `--json` (one document, the same bytes as a
 * document built whole: `{model, device, quant, sampling, outputs: [...], timings}`, or the one
 * row's fields in place of `outputs` when the input had exactly one row), or `--jsonl` (one
 * object per row and line). Nothing is held but the first row (to know which JSON shape).
 */
export interface BatchWriter {
  /** The model is open (called again when it is reopened: ignored then). */
  begin(device: string): void;
  row(row: BatchRow, output: GenerationOutput): void;
  /** After the last row; `complete` is false when a bad line stopped the run. */
  end(timings: GenerationTimings, complete: boolean): void;
}

export function createBatchWriter(options: GenerateCommandOptions): BatchWriter {
  if (options.jsonl) return jsonlWriter();
  if (options.json) return jsonDocumentWriter(options);
  return humanWriter(options.echo);
}

const write = writeStdout;

function humanWriter(echo: boolean): BatchWriter {
  let rows = 0;
  return {
    begin() {},
    row(row, o) {
      write(
        `${rows > 0 ? '\n' : ''}## row ${rows + 1} (${adapterSetLabel(row.adapters)})\n${echo ? o.prompt : ''}${o.text}\n`,
      );
      rows++;
    },
    end() {},
  };
}

function jsonlWriter(): BatchWriter {
  return {
    begin() {},
    row(row, o) {
      write(`${JSON.stringify({ line: row.line, ...jsonRow(o, row.adapters) })}\n`);
    },
    end() {},
  };
}

/** `JSON.stringify(value, null, 2)` placed at `depth` levels of indentation (strings hold no raw newline). */
function indented(value: unknown, depth: number): string {
  const pad = '  '.repeat(depth);
  return JSON.stringify(value, null, 2).replaceAll('\n', `\n${pad}`);
}

function jsonDocumentWriter(options: GenerateCommandOptions): BatchWriter {
  let header: Record<string, unknown> | undefined;
  let first: Record<string, unknown> | undefined;
  let rows = 0;
  /** Opens the document and its `outputs` array (the header's own closing brace dropped). */
  const open = () => {
    write(`${indented(header, 0).slice(0, -2)},\n  "outputs": [\n    ${indented(first, 2)}`);
  };
  return {
    begin(device) {
      header ??= generationHeader(options, device);
    },
    row(row, o) {
      const value = jsonRow(o, row.adapters);
      rows++;
      if (rows === 1) first = value;
      else {
        if (rows === 2) open();
        write(`,\n    ${indented(value, 2)}`);
      }
    },
    end(timings, complete) {
      // no row: a failed run prints only its error
      if (header === undefined || rows === 0) return;
      const tail = `"timings": ${indented(jsonTimings(timings), 1)}\n}\n`;
      if (rows === 1 && complete) {
        // One row: its fields in place of `outputs`, as for a single --prompt.
        const doc = indented({ ...header, ...first }, 0);
        write(`${doc.slice(0, -2)},\n  ${tail}`);
        return;
      }
      if (rows === 1) open();
      write(`\n  ],\n  ${tail}`);
    },
  };
}
