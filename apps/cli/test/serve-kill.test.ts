import { existsSync, readdirSync, statSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, sep } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bundledModelDir } from '../src/bundled-model.js';
import {
  type ChildResult,
  cliBuilt,
  hashTree,
  runCliChild,
  stopChildren,
  temporariesIn,
  waitFor,
} from './helpers/child-cli.js';
import {
  bytesRead,
  listTree,
  openFiles,
  postJson,
  type ServeChild,
  startServe,
  streamCompletion,
  writeModelAdapters,
} from './helpers/serve-child.js';

/**
 * `lora serve` killed (SIGKILL) while it loads adapters: during `--preload` at startup, during
 * a POST /v1/adapters load, during a request that loads its adapter on first use, and while
 * requests using adapters stream. Afterwards the inputs (adapters folder, bundled model) are
 * byte-identical, nothing is left in the adapters folder, the model folder, the working folder
 * or TMPDIR (each process gets TMPDIR pointed at a test folder, so every temporary it makes is
 * seen), and the next `lora serve` on the same folders starts clean and answers with an adapter
 * exactly as `lora generate --adapter` does. SIGTERM during the startup preload exits 143 (as
 * every command); SIGTERM while a listening server loads adapters lets the loads and requests
 * finish, then exits 0.
 *
 * The one thing serve writes is the session weight file of the base model (a temporary folder
 * in TMPDIR, noted in the temporaries journal `TMPDIR/.lora-temporaries/PID`, both deleted as
 * soon as the onnxruntime session exists, before any adapter loads). The "model loading" kill
 * shows that this is all a kill can leave, and that the next run removes it; the kills during
 * adapter loading leave nothing at all.
 */

/** The kill moments are found through /proc (bytes read, open files of the server). */
const hasProc = existsSync('/proc/self/io');
if (!hasProc) console.warn('SKIPPED: the serve kill tests need Linux /proc (/proc/self/io).');
const model = bundledModelDir();
/** The files of the model folder serve reads (the folder also holds docs other tools update). */
const MODEL_FILES = [
  'config.json',
  'model.safetensors',
  'tokenizer.json',
  'tokenizer_config.json',
  'generation_config.json',
];
/** pre0..pre7 (rank 16) to preload; rank-128 adapters whose load takes long enough to kill in. */
const RANKS: Record<string, number> = {
  ...Object.fromEntries(Array.from({ length: 8 }, (_, k) => [`pre${k}`, 16])),
  posted: 128,
  lazy: 128,
  drain: 128,
};
const PRELOAD_ALL = Object.keys(RANKS)
  .filter((n) => n.startsWith('pre'))
  .join(',');
const PROMPT = 'Once upon a time';

let root: string;
let adapters: string;
let adaptersHash: Record<string, string>;
let adaptersListing: string[];
let modelHash: Record<string, string>;
/** The processes the first test ended (PID, TMPDIR), for the leftover scans of the second. */
const ended: { pid: number; tmp: string }[] = [];
/** TMPDIR of the process killed while the base model loaded: what it left there. */
let staleTmp: string | undefined;
/**
 * An adapter a kill was loading: the next server must answer with it as `lora generate` does
 * (each compared adapter costs a `lora generate` process, so one).
 */
const COMPARED = ['posted'];
const MAX_TOKENS = 12;
/** `lora generate --adapter` for each of COMPARED, started early (its own TMPDIR) to overlap. */
let references: Promise<ChildResult[]>;

beforeAll(async () => {
  if (!cliBuilt || !hasProc) return;
  root = await mkdtemp(join(tmpdir(), 'lora-serve-kill-'));
  adapters = join(root, 'adapters');
  await writeModelAdapters(model, adapters, RANKS);
  adaptersHash = hashTree(adapters);
  adaptersListing = listTree(adapters);
  modelHash = modelFilesHash();
  outsideBefore = new Set(outsideEntries());
  const elsewhere = join(root, 'generate');
  await mkdir(elsewhere);
  references = Promise.all(
    COMPARED.map((name) =>
      runCliChild(
        [
          'generate',
          '--adapter',
          join(adapters, name),
          '--prompt',
          PROMPT,
          '--max-tokens',
          String(MAX_TOKENS),
          '--temperature',
          '0',
          '--json',
          '--quiet',
        ],
        { cwd: elsewhere, shellPrefix: `export TMPDIR='${elsewhere}'` },
      ),
    ),
  );
});

afterAll(async () => {
  await stopChildren();
  if (root) await rm(root, { recursive: true, force: true });
});

function modelFilesHash(): Record<string, string> {
  return Object.fromEntries(MODEL_FILES.map((f) => [f, hashTree(join(model, f))['.']]));
}

/** Files below `dir` that `s` has open now, relative to `dir`. */
function openIn(s: ServeChild, dir: string): string[] {
  return openFiles(s.pid)
    .filter((f) => f.startsWith(dir + sep))
    .map((f) => f.slice(dir.length + 1));
}

/** Size of an adapter's weights file. */
function weightsSize(name: string): number {
  return statSync(join(adapters, name, 'adapter_model.safetensors')).size;
}

const mb = (bytes: number) => `${(bytes / 2 ** 20).toFixed(1)} MB`;
const listening = (s: ServeChild) => s.stderr().includes('listening on');

/** Where else a temporary could go (the session weight file prefers /dev/shm without TMPDIR). */
const OUTSIDE = ['/dev/shm', tmpdir(), join(tmpdir(), '.lora-temporaries')];
/** Their entries before the test: other processes of the machine (PIDs recycle) use them too. */
let outsideBefore: Set<string>;

function outsideEntries(): string[] {
  return OUTSIDE.filter((d) => existsSync(d)).flatMap((d) => readdirSync(d).map((n) => join(d, n)));
}

/**
 * What process `pid` left: entries named after it (temporaries are `.NAME.tmp-PID-HEX`, its
 * journal is `.lora-temporaries/PID`) in its TMPDIR `tmp`, and new ones in `/dev/shm` and the
 * OS temp folder.
 */
function leftoversOf(pid: number, tmp: string): string[] {
  const mine = new RegExp(`(\\.(tmp|old)-${pid}-[^${sep}]*|\\.lora-temporaries${sep}${pid})$`);
  const inTmp = listTree(tmp)
    .map((e) => join(tmp, e.replace(/( \(\d+\)|\/)$/, '')))
    .filter((p) => mine.test(p));
  const outside = outsideEntries().filter((p) => !outsideBefore.has(p) && mine.test(p));
  return [...inTmp, ...outside];
}

/** The inputs are byte-identical and the adapters and model folders hold nothing new. */
function expectInputsIntact(): void {
  expect(hashTree(adapters)).toEqual(adaptersHash);
  expect(listTree(adapters)).toEqual(adaptersListing);
  expect(modelFilesHash()).toEqual(modelHash);
  expect(temporariesIn(model)).toEqual([]);
}

interface Moment {
  name: string;
  args: string[];
  signal: 'SIGKILL' | 'SIGTERM';
  /** Waits for the moment, sends `signal`, and says what was in progress when it was sent. */
  drive(s: ServeChild, signal: NodeJS.Signals): Promise<string>;
}

/**
 * Sends `signal` once `predicate` holds (or the process ended, or after 60 s); the predicate is
 * polled every 2 ms.
 */
async function signalWhen(
  s: ServeChild,
  signal: NodeJS.Signals,
  predicate: () => boolean,
): Promise<void> {
  await waitFor(() => s.exited() || predicate(), 60_000);
  s.child.kill(signal);
}

/** Bytes `s` has read since `start` (Infinity once it has exited: stop waiting). */
function readSince(s: ServeChild, start: number): number {
  return (bytesRead(s.pid) ?? Number.POSITIVE_INFINITY) - start;
}

/** True while `s` writes its session weight file (the base model loading) in TMPDIR. */
function sessionFileIn(s: ServeChild): boolean {
  return readdirSync(s.tmp).some((n) => n.startsWith(`.lora-session.tmp-${s.pid}-`));
}

/** Signals during the startup preload of pre0..pre7, while the 3rd adapter is being read. */
async function duringPreload(s: ServeChild, signal: NodeJS.Signals): Promise<string> {
  // The preload follows the base model's session, whose weight file comes and goes first.
  let appeared = false;
  await waitFor(() => {
    const now = sessionFileIn(s);
    appeared ||= now;
    return s.exited() || (appeared && !now) || listening(s);
  }, 60_000);
  const start = bytesRead(s.pid) ?? 0;
  const each = weightsSize('pre0');
  let read = 0;
  let open: string[] = [];
  await signalWhen(s, signal, () => {
    read = readSince(s, start);
    if (read < 2.5 * each && !listening(s)) return false;
    open = openIn(s, adapters);
    return true;
  });
  expect(listening(s), 'the signal was sent after the preload ended').toBe(false);
  return `preloading: ${(read / each).toFixed(1)} of 8 adapters' weights read, open: ${open.join(', ') || 'none'}`;
}

const MOMENTS: Moment[] = [
  {
    name: 'model loading',
    args: ['--max-loaded', '2'],
    signal: 'SIGKILL',
    drive: async (s, signal) => {
      await signalWhen(s, signal, () => sessionFileIn(s));
      return 'the session weight file of the base model is written to TMPDIR';
    },
  },
  {
    name: '--preload of 8 adapters',
    args: ['--max-loaded', '8', '--preload', PRELOAD_ALL],
    signal: 'SIGKILL',
    drive: duringPreload,
  },
  {
    name: 'POST /v1/adapters',
    args: ['--max-loaded', '2'],
    signal: 'SIGKILL',
    drive: async (s, signal) => {
      const url = await s.url;
      const size = weightsSize('posted');
      const start = bytesRead(s.pid) ?? 0;
      let answered = false;
      const post = postJson(`${url}/v1/adapters`, { name: 'posted' }).finally(() => {
        answered = true;
      });
      post.catch(() => {});
      let read = 0;
      await signalWhen(s, signal, () => {
        read = readSince(s, start);
        return answered || read >= size / 2;
      });
      expect(answered, 'POST /v1/adapters answered before the kill').toBe(false);
      return `POST {"name":"posted"} unanswered, ${mb(read)} of its ${mb(size)} of weights read`;
    },
  },
  {
    name: 'load on first use',
    args: ['--max-loaded', '2'],
    signal: 'SIGKILL',
    drive: async (s, signal) => {
      const url = await s.url;
      const size = weightsSize('lazy');
      const start = bytesRead(s.pid) ?? 0;
      let answered = false;
      const request = postJson(`${url}/v1/completions`, {
        model: 'lazy',
        prompt: PROMPT,
        max_tokens: 8,
        temperature: 0,
      }).finally(() => {
        answered = true;
      });
      request.catch(() => {});
      // Once its weights are read and the file closed: the adapter is going into a slot.
      const weights = join(adapters, 'lazy');
      await signalWhen(
        s,
        signal,
        () => answered || (readSince(s, start) >= size && openIn(s, weights).length === 0),
      );
      expect(answered, 'the completion answered before the kill').toBe(false);
      return `a completion with "lazy" unanswered, its ${mb(size)} of weights read and closed`;
    },
  },
  {
    name: 'requests streaming',
    args: ['--max-loaded', '4', '--preload', 'pre0,pre1'],
    signal: 'SIGKILL',
    drive: async (s, signal) => {
      const url = await s.url;
      const streams = ['pre0', 'pre1', 'pre4', 'pre5'].map((name) =>
        streamCompletion(url, { model: name, prompt: PROMPT, max_tokens: 200, temperature: 0 }),
      );
      await signalWhen(s, signal, () => streams.every((t) => t.started()));
      const ends = await Promise.all(streams.map((t) => t.ended));
      expect(streams.map((t) => t.started())).toEqual([true, true, true, true]);
      expect(ends).toEqual(['cut', 'cut', 'cut', 'cut']);
      return '4 streams on 4 adapters (2 preloaded, 2 loaded on first use) are past their first token';
    },
  },
  {
    name: 'SIGTERM in --preload',
    args: ['--max-loaded', '8', '--preload', PRELOAD_ALL],
    signal: 'SIGTERM',
    drive: duringPreload,
  },
];

describe.skipIf(!cliBuilt || !hasProc)('lora serve killed while it loads adapters', () => {
  it('SIGKILL at 5 moments, SIGTERM during the preload: inputs byte-identical, nothing written while adapters load', async () => {
    const outcomes = await Promise.all(
      MOMENTS.map(async (m) => {
        // Each process has its own working folder and TMPDIR (so that none removes what
        // another left before it is seen), checked afterwards.
        const slug = m.name.replace(/[^a-z0-9]+/gi, '-');
        const [cwd, tmp] = [join(root, `cwd-${slug}`), join(root, `tmp-${slug}`)];
        await Promise.all([mkdir(cwd), mkdir(tmp)]);
        const s = startServe(['--adapters', adapters, ...m.args], cwd, tmp);
        const at = await m.drive(s, m.signal);
        const result: ChildResult = await s.done;
        ended.push({ pid: s.pid, tmp });
        return { m, s, at, result, cwd, left: leftoversOf(s.pid, tmp) };
      }),
    );
    const lines: string[] = [];
    for (const o of outcomes) {
      if (o.m.signal === 'SIGKILL') expect(o.result.signal, o.m.name).toBe('SIGKILL');
      else {
        expect(o.result.code, `${o.m.name}: ${o.result.stderr}`).toBe(143);
        expect(o.result.stderr).toMatch(/stopped by SIGTERM/);
      }
      expect(readdirSync(o.cwd), `${o.m.name}: working folder`).toEqual([]);
      if (o.m.name === 'model loading') {
        // The session weight file (and the journal naming it) is all a kill can leave, for
        // the next run to remove.
        staleTmp = o.s.tmp;
        for (const entry of listTree(o.s.tmp)) {
          expect(entry, 'model loading: TMPDIR').toMatch(
            new RegExp(`^(\\.lora-session\\.tmp-${o.s.pid}-|\\.lora-temporaries/(${o.s.pid} |$))`),
          );
        }
      } else {
        // Adapter loading writes nothing: TMPDIR holds only the empty journal folder that the
        // session weight file of the base model (removed, before any adapter loads) was noted in.
        expect(o.left, o.m.name).toEqual([]);
        expect(listTree(o.s.tmp), `${o.m.name}: TMPDIR`).toEqual(['.lora-temporaries/']);
      }
      lines.push(
        `${o.m.name}: ${o.m.signal} while ${o.at} -> ${o.result.signal ?? `exit ${o.result.code}`}; left: ${o.left.map((p) => p.slice(root.length + 1)).join(', ') || 'nothing'}`,
      );
    }
    expectInputsIntact();
    console.log(`lora serve kills\n  ${lines.join('\n  ')}`);
  }, 120_000);

  it('the next lora serve removes what the kills left, answers as lora generate --adapter; SIGTERM while it loads adapters drains and exits 0', async () => {
    // The same TMPDIR as the process killed while the model loaded, with what it left.
    const tmp = staleTmp ?? join(root, 'tmp-next');
    const cwd = join(root, 'cwd-next');
    await mkdir(tmp, { recursive: true });
    await mkdir(cwd);
    const before = listTree(tmp);
    if (staleTmp) expect(before.some((e) => e.startsWith('.lora-session.tmp-'))).toBe(true);
    const s = startServe(
      ['--adapters', adapters, '--max-loaded', '4', '--preload', 'pre0,pre1'],
      cwd,
      tmp,
    );
    const url = await s.url;
    // The journal folder stays (shared by every lora process), empty: no journal, no temporary.
    expect(listTree(tmp)).toEqual(['.lora-temporaries/']);
    for (const e of ended) expect(leftoversOf(e.pid, e.tmp)).toEqual([]);

    // Greedy answers with an adapter a kill was loading equal `lora generate --adapter`.
    const served = await Promise.all(
      COMPARED.map((name) =>
        postJson(`${url}/v1/completions`, {
          model: name,
          prompt: PROMPT,
          max_tokens: MAX_TOKENS,
          temperature: 0,
        }),
      ),
    );
    const generated = await references;
    const texts: string[] = [];
    for (const [k, name] of COMPARED.entries()) {
      expect(served[k].status, JSON.stringify(served[k].json)).toBe(200);
      expect(generated[k].code, generated[k].stderr).toBe(0);
      const text = (served[k].json.choices as { text: string }[])[0].text;
      expect(text, name).toBe(JSON.parse(generated[k].stdout).text);
      texts.push(`${name} ${JSON.stringify(text)}`);
    }

    // SIGTERM while a POST /v1/adapters load is in progress and no completion is: the drain waits
    // for every request, not only completions (a completion in flight is serve.test.ts's case).
    const size = weightsSize('drain');
    const start = bytesRead(s.pid) ?? 0;
    let answered = false;
    const load = postJson(`${url}/v1/adapters`, { name: 'drain' }).finally(() => {
      answered = true;
    });
    let read = 0;
    await signalWhen(s, 'SIGTERM', () => {
      read = readSince(s, start);
      return answered || read >= size / 2;
    });
    expect(answered, 'POST /v1/adapters answered before SIGTERM').toBe(false);
    const [loaded, result] = await Promise.all([load, s.done]);
    expect(loaded.status, JSON.stringify(loaded.json)).toBe(200);
    expect(loaded.json.loaded).toBe(true);
    expect(result.code, result.stderr).toBe(0);
    expect(result.stderr).toMatch(
      /SIGTERM: no new requests; finishing 0 completions \(at most 10 s\) and 1 adapter load\n[\s\S]*stopped/,
    );
    expect(listTree(tmp)).toEqual(['.lora-temporaries/']);
    expect(readdirSync(cwd)).toEqual([]);
    expect(leftoversOf(s.pid, tmp)).toEqual([]);
    expectInputsIntact();
    console.log(
      `lora serve after the kills\n  TMPDIR before: ${before.join(', ')}\n  after start: only .lora-temporaries/ (empty)\n  greedy = generate --adapter: ${texts.join(', ')}\n  SIGTERM with POST {"name":"drain"} unanswered (${mb(read)} of its ${mb(size)} of weights read): POST 200, exit 0`,
    );
  }, 120_000);
});
