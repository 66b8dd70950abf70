import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { parseHeader, parseHeaderLength } from '../safetensors/header.js';

/**
 * The metadata key naming the command that wrote an output: a string entry of a safetensors
 * file's `__metadata__` (a str -> str map that transformers, PEFT and safetensors ignore beyond
 * `format`), or of an ONNX model's `metadata_props`. `--force` replaces only an output that
 * carries the name of the command writing it again.
 */
export const OUTPUT_WRITER_KEY = 'lora.writer';

/**
 * The metadata entry recording `writer` (e.g. `"quantize"`), to spread into a file's metadata;
 * empty when no writer is given.
 */
export function outputMarker(writer: string | undefined): Record<string, string> {
  return writer === undefined ? {} : { [OUTPUT_WRITER_KEY]: writer };
}

/** Files that carry the marker: weights and models. Other files belong to the output they sit in. */
export function isMarkedKind(path: string): boolean {
  return path.endsWith('.safetensors') || path.endsWith('.onnx');
}

/** A JSON report larger than this is not one we wrote. */
const MAX_JSON_REPORT_BYTES = 1 << 20;

/**
 * The command recorded in a `.safetensors` or `.onnx` file (headers only: the safetensors JSON
 * header, or the top-level fields of the ONNX ModelProto with the graph skipped), or in a small
 * `.json` report (its top-level `lora.writer`), or undefined when it carries none, is not such a
 * file, or cannot be read.
 */
export function readOutputWriter(path: string): string | undefined {
  let fd: number | undefined;
  try {
    fd = openSync(path, 'r');
    const size = fstatSync(fd).size;
    if (path.endsWith('.safetensors')) return safetensorsWriter(fd, size, path);
    if (path.endsWith('.onnx')) return onnxWriter(fd, size);
    if (path.endsWith('.json') && size <= MAX_JSON_REPORT_BYTES) {
      const value = JSON.parse(new TextDecoder().decode(readAt(fd, 0, size)));
      const writer = value?.[OUTPUT_WRITER_KEY];
      return typeof writer === 'string' ? writer : undefined;
    }
    return undefined;
  } catch {
    return undefined; // unreadable or not the format its name says: not ours
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

function readAt(fd: number, position: number, length: number): Uint8Array {
  const bytes = new Uint8Array(length);
  let done = 0;
  while (done < length) {
    const n = readSync(fd, bytes, done, length - done, position + done);
    if (n === 0) break;
    done += n;
  }
  return bytes.subarray(0, done);
}

function safetensorsWriter(fd: number, size: number, path: string): string | undefined {
  const length = parseHeaderLength(readAt(fd, 0, 8), size, path);
  return parseHeader(readAt(fd, 8, length), size, path).metadata[OUTPUT_WRITER_KEY];
}

/** ModelProto field numbers (onnx.proto3) and StringStringEntryProto's. */
const METADATA_PROPS = 14;
const ENTRY_KEY = 1;
const ENTRY_VALUE = 2;
/** A real ModelProto has about ten top-level fields; more means it is not one (or not ours). */
const MAX_TOP_LEVEL_FIELDS = 4096;
/** A metadata entry larger than this is not one we wrote. */
const MAX_ENTRY_BYTES = 1 << 20;

/** Reads a protobuf varint at `at` of `bytes`: [value, next offset], or undefined if cut short. */
function varint(bytes: Uint8Array, at: number): [number, number] | undefined {
  let value = 0;
  let scale = 1;
  for (let i = at; i < bytes.length && i < at + 10; i++) {
    value += (bytes[i] & 0x7f) * scale;
    if ((bytes[i] & 0x80) === 0) return [value, i + 1];
    scale *= 128;
  }
  return undefined;
}

/** The length-delimited string fields of one small message, by field number. */
function stringFields(bytes: Uint8Array): Map<number, string> {
  const fields = new Map<number, string>();
  let at = 0;
  while (at < bytes.length) {
    const tag = varint(bytes, at);
    if (!tag || tag[0] % 8 !== 2) break;
    const len = varint(bytes, tag[1]);
    if (!len || len[1] + len[0] > bytes.length) break;
    fields.set(
      Math.floor(tag[0] / 8),
      new TextDecoder().decode(bytes.subarray(len[1], len[1] + len[0])),
    );
    at = len[1] + len[0];
  }
  return fields;
}

/** Walks the top-level fields of a ModelProto, skipping the (large) graph without reading it. */
function onnxWriter(fd: number, size: number): string | undefined {
  let position = 0;
  for (let n = 0; n < MAX_TOP_LEVEL_FIELDS && position < size; n++) {
    const head = readAt(fd, position, 20);
    const tag = varint(head, 0);
    if (!tag) return undefined;
    const field = Math.floor(tag[0] / 8);
    const wire = tag[0] % 8;
    let next: number;
    if (wire === 0) {
      const v = varint(head, tag[1]);
      if (!v) return undefined;
      next = position + v[1];
    } else if (wire === 1) next = position + tag[1] + 8;
    else if (wire === 5) next = position + tag[1] + 4;
    else if (wire === 2) {
      const len = varint(head, tag[1]);
      if (!len) return undefined;
      const start = position + len[1];
      next = start + len[0];
      if (next > size) return undefined;
      if (field === METADATA_PROPS && len[0] <= MAX_ENTRY_BYTES) {
        const entry = stringFields(readAt(fd, start, len[0]));
        if (entry.get(ENTRY_KEY) === OUTPUT_WRITER_KEY) return entry.get(ENTRY_VALUE);
      }
    } else return undefined; // groups: not an ONNX model
    position = next;
  }
  return undefined;
}
