import type { ChildProcess } from 'node:child_process';
import { readdirSync, readFileSync, readlinkSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { savePeftAdapter } from '@lora/adapters';
import {
  LLAMA_LINEARS,
  llamaLinearShape,
  llamaModuleName,
  parseLlamaConfig,
} from '@lora/runtime-onnx';
import { syntheticAdapter } from '../../../../packages/adapters/src/test-utils/synthetic.js';
import { type ChildResult, startCli } from './child-cli.js';

/**
 * Writes one random PEFT adapter per `ranks` entry into `folder/<name>`, on every linear of
 * every layer of the LLaMA model in `model` (shapes read from its config.json).
 */
export async function writeModelAdapters(
  model: string,
  folder: string,
  ranks: Record<string, number>,
): Promise<void> {
  const config = parseLlamaConfig(JSON.parse(readFileSync(join(model, 'config.json'), 'utf8')));
  const modules: Record<string, { in: number; out: number }> = {};
  for (let l = 0; l < config.numLayers; l++) {
    for (const linear of LLAMA_LINEARS) {
      const [out, inFeatures] = llamaLinearShape(config, linear);
      modules[llamaModuleName(l, linear)] = { in: inFeatures, out };
    }
  }
  let seed = 1;
  for (const [name, r] of Object.entries(ranks)) {
    await savePeftAdapter(
      join(folder, name),
      syntheticAdapter(modules, { r, lora_alpha: 2 * r }, seed++),
    );
  }
}

/** A `lora serve` child process. */
export interface ServeChild {
  child: ChildProcess;
  pid: number;
  /** Its TMPDIR. */
  tmp: string;
  /** Resolves with `http://host:port` once the server prints it; rejects if it exits first. */
  url: Promise<string>;
  done: Promise<ChildResult>;
  /** stderr so far. */
  stderr(): string;
  /** True once the process has ended. */
  exited(): boolean;
}

/**
 * Starts `lora serve --port 0 <args>` in `cwd` with `TMPDIR` pointed at `tmp` (and
 * `LORA_SESSION_DIR` unset), so that every temporary of the process (session weight files, the
 * temporaries journal) goes there.
 */
export function startServe(args: readonly string[], cwd: string, tmp: string): ServeChild {
  const { child, done } = startCli(['serve', '--port', '0', ...args], {
    cwd,
    shellPrefix: `unset LORA_SESSION_DIR; export TMPDIR='${tmp}'`,
  });
  let stderr = '';
  child.stderr!.on('data', (d) => {
    stderr += d;
  });
  const url = new Promise<string>((resolve, reject) => {
    child.stderr!.on('data', () => {
      const m = /listening on (http:\/\/[^\s]+)/.exec(stderr);
      if (m) resolve(m[1]);
    });
    done.then((r) =>
      reject(new Error(`lora serve ended (${r.signal ?? r.code}) before listening: ${stderr}`)),
    );
  });
  url.catch(() => {}); // a kill before listening is expected in some tests
  let ended = false;
  done.then(() => {
    ended = true;
  });
  return { child, pid: child.pid!, tmp, url, done, stderr: () => stderr, exited: () => ended };
}

/**
 * Bytes process `pid` has read so far (`rchar` of /proc/PID/io: every read and pread, files and
 * sockets), or undefined once it has exited. A counter that only grows: polling it never misses
 * a read, however short, as polling the open files can.
 */
export function bytesRead(pid: number): number | undefined {
  try {
    const m = /^rchar: (\d+)$/m.exec(readFileSync(`/proc/${pid}/io`, 'utf8'));
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

/** The files process `pid` has open now (empty once it has exited). */
export function openFiles(pid: number): string[] {
  const dir = `/proc/${pid}/fd`;
  const files: string[] = [];
  let fds: string[] = [];
  try {
    fds = readdirSync(dir);
  } catch {
    return files;
  }
  for (const fd of fds) {
    try {
      files.push(readlinkSync(join(dir, fd)));
    } catch {
      /* closed meanwhile */
    }
  }
  return files;
}

/**
 * Every entry below `dir` (folders too, hidden ones included), as `relative path (size)`:
 * two listings are equal when nothing was added, removed, or resized.
 */
export function listTree(dir: string): string[] {
  const out: string[] = [];
  const walk = (p: string) => {
    for (const name of readdirSync(p).sort()) {
      const path = join(p, name);
      const s = statSync(path);
      out.push(`${relative(dir, path)}${s.isDirectory() ? '/' : ` (${s.size})`}`);
      if (s.isDirectory()) walk(path);
    }
  };
  walk(dir);
  return out;
}

/** POSTs `body` as JSON to `url`; resolves with the status and the parsed answer. */
export async function postJson(
  url: string,
  body: unknown,
): Promise<{ status: number; json: Record<string, unknown> }> {
  const r = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  return { status: r.status, json: (await r.json()) as Record<string, unknown> };
}

/** A streamed completion: whether a token arrived, and how the stream ended. */
export interface Stream {
  /** True once the first `data:` event with text has arrived. */
  started(): boolean;
  /** `done` when `[DONE]` arrived, `cut` when the connection broke before it. */
  ended: Promise<'done' | 'cut'>;
}

/** Starts a streamed POST /v1/completions with `body` (`stream: true` is added). */
export function streamCompletion(url: string, body: Record<string, unknown>): Stream {
  let text = '';
  const ended = (async (): Promise<'done' | 'cut'> => {
    try {
      const r = await fetch(`${url}/v1/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ ...body, stream: true }),
      });
      const decoder = new TextDecoder();
      for await (const chunk of r.body!) text += decoder.decode(chunk, { stream: true });
      return text.includes('data: [DONE]') ? 'done' : 'cut';
    } catch {
      return 'cut';
    }
  })();
  return { started: () => text.includes('"text":'), ended };
}
