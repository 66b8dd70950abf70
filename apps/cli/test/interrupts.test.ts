import { existsSync, readdirSync } from 'node:fs';
import { cp, mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  cliBuilt,
  hashTree,
  runCliChild,
  startCli,
  stopChildren,
  temporariesIn,
  waitFor,
  writeSyntheticAdapter,
  writeSyntheticLlama,
} from './helpers/child-cli.js';

/**
 * Real kills of the real `lora` process at several moments of every command that writes
 * weights: the output path is then absent or complete and byte-identical to an uninterrupted
 * run, the inputs are byte-identical, and the next run of any command removes what the killed
 * process left behind. SIGINT/SIGTERM remove the temporaries themselves and exit 130/143.
 */

let root: string;
let model: string;
let adapter: string;
let adapter2: string;
let tuned: string;
let inputsBefore: Record<string, Record<string, string>>;

beforeAll(async () => {
  if (!cliBuilt) return;
  root = await mkdtemp(join(tmpdir(), 'lora-interrupts-'));
  model = join(root, 'model');
  adapter = join(root, 'adapter');
  adapter2 = join(root, 'adapter2');
  tuned = join(root, 'tuned');
  await writeSyntheticLlama(model);
  await writeSyntheticAdapter(adapter, 1);
  await writeSyntheticAdapter(adapter2, 2);
  await writeSyntheticLlama(tuned, 2);
  inputsBefore = Object.fromEntries([model, adapter, adapter2, tuned].map((p) => [p, hashTree(p)]));
});

afterAll(async () => {
  await stopChildren();
  if (root) await rm(root, { recursive: true, force: true });
});

interface Case {
  name: string;
  /** The output's name in its own folder, and the command line writing it. */
  output: string;
  args: (out: string) => string[];
  /** Files that must all exist for the output to count as present (export: model + data). */
  parts: (out: string) => string[];
}

const cases: Case[] = [
  {
    name: 'quantize',
    output: 'q4',
    args: (out) => ['quantize', model, '-o', out, '--threads', '1', '--quiet'],
    parts: (out) => [out],
  },
  {
    name: 'merge',
    output: 'merged',
    args: (out) => ['merge', '--base', model, '--adapter', adapter, '-o', out, '--quiet'],
    parts: (out) => [out],
  },
  {
    name: 'combine',
    output: 'combined',
    args: (out) => [
      'combine',
      '--adapter',
      adapter,
      '--adapter',
      adapter2,
      '--method',
      'svd',
      '--rank',
      '8',
      '-o',
      out,
      '--quiet',
    ],
    parts: (out) => [out],
  },
  {
    name: 'extract',
    output: 'extracted',
    args: (out) => ['extract', '--base', model, '--tuned', tuned, '--rank', '4', '-o', out],
    parts: (out) => [out],
  },
  {
    name: 'export-onnx',
    output: 'model.onnx',
    args: (out) => ['export-onnx', '--model', model, '-o', out, '--external-data', '--quiet'],
    parts: (out) => [out, `${out}.data`],
  },
];

/** The moments a kill is sent at, relative to what the process has done. */
type Moment = 'startup' | 'temporary appears' | 'mid-write' | 'output appears';
const MOMENTS: Moment[] = ['startup', 'temporary appears', 'mid-write', 'output appears'];

/** Hash of the output (all its parts), or undefined when its main part is absent. */
function outputState(c: Case, out: string): Record<string, string> | undefined {
  if (!existsSync(out)) return undefined;
  return Object.fromEntries(c.parts(out).map((p) => [p, JSON.stringify(hashTree(p))]));
}

/** Starts the command writing into `sub`, kills it with SIGKILL at `moment`; returns the outcome. */
async function killAt(c: Case, sub: string, moment: Moment, duration: number) {
  const out = join(sub, c.output);
  await mkdir(sub, { recursive: true });
  const { child, done } = startCli(c.args(out));
  let exited = false;
  done.then(() => {
    exited = true;
  });
  const started = () => temporariesIn(sub).some((n) => n.includes('.tmp-')) || existsSync(out);
  if (moment === 'startup') await new Promise((r) => setTimeout(r, 300));
  else if (moment === 'temporary appears') await waitFor(() => exited || started(), duration * 4);
  else if (moment === 'mid-write') {
    await waitFor(() => exited || started(), duration * 4);
    await new Promise((r) => setTimeout(r, 20));
  } else await waitFor(() => exited || existsSync(out), duration * 4);
  child.kill('SIGKILL');
  const r = await done;
  return { moment, result: r, out, state: outputState(c, out), left: temporariesIn(sub) };
}

describe.skipIf(!cliBuilt)('real kills during writes', () => {
  for (const c of cases) {
    it(`${c.name}: SIGKILL at ${MOMENTS.join(', ')} leaves the output absent or complete; inputs intact; the next run cleans up`, async () => {
      const dir = join(root, c.name);
      const reference = join(dir, 'reference', c.output);
      const t0 = Date.now();
      const base = await runCliChild(c.args(reference));
      expect(base.stderr).not.toMatch(/Error|lora:/);
      expect(base.code).toBe(0);
      const duration = Date.now() - t0;
      const expected = Object.values(outputState(c, reference)!);
      // The moments run in parallel, each process writing into its own folder.
      const kills = await Promise.all(
        MOMENTS.map((m) => killAt(c, join(dir, m.replaceAll(' ', '-')), m, duration)),
      );
      const outcomes: string[] = [];
      for (const k of kills) {
        // Absent, or complete and byte-identical to the uninterrupted run.
        if (k.state !== undefined) expect(Object.values(k.state)).toEqual(expected);
        outcomes.push(
          `${k.moment}: ${k.result.signal ?? `exit ${k.result.code}`}, output ${k.state ? 'complete' : 'absent'}, temporaries left: ${k.left.length}`,
        );
      }
      for (const [p, h] of Object.entries(inputsBefore)) expect(hashTree(p)).toEqual(h);
      // The next run of any command (here: inspect) removes what the killed processes left.
      const next = await runCliChild(['inspect', model, '--json']);
      expect(next.code).toBe(0);
      for (const k of kills) expect(temporariesIn(join(k.out, '..'))).toEqual([]);
      console.log(`${c.name} (uninterrupted: ${duration} ms)\n  ${outcomes.join('\n  ')}`);
    }, 90_000);
  }

  const replaceCases = [
    {
      name: 'quantize',
      parts: (out: string) => [out],
      args: (out: string, older: boolean) =>
        ['quantize', model, '-o', out, '--quiet'].concat(older ? ['--format', 'fp4'] : []),
    },
    {
      name: 'export-onnx --external-data',
      parts: (out: string) => [out, `${out}.data`],
      args: (out: string, older: boolean) =>
        ['export-onnx', '--model', model, '-o', out, '--external-data', '--quiet'].concat(
          older ? ['--quant', 'int4'] : [],
        ),
    },
  ];
  for (const rc of replaceCases) {
    it(`${rc.name} --force over an earlier output: after a kill and the next run, no output or the old or the new one, whole`, async () => {
      const dir = join(root, `replace-${rc.name.split(' ')[0]}`);
      const name = rc.name.startsWith('export') ? 'model.onnx' : 'q';
      const oldRef = join(dir, 'old', name);
      const newRef = join(dir, 'new', name);
      const state = (out: string) => JSON.stringify(rc.parts(out).map((p) => hashTree(p)));
      const refs = await Promise.all([
        runCliChild(rc.args(oldRef, true)),
        runCliChild(rc.args(newRef, false)),
      ]);
      for (const r of refs) expect(r.code, r.stderr).toBe(0);
      const [oldState, newState] = [state(oldRef), state(newRef)];
      expect(oldState).not.toBe(newState);
      const delays = [0, 150]; // ms after the first temporary appears
      const outcomes = await Promise.all(
        delays.map(async (delay) => {
          const sub = join(dir, `kill-${delay}`);
          const out = join(sub, name);
          await mkdir(sub, { recursive: true });
          for (const [i, p] of rc.parts(oldRef).entries()) {
            await cp(p, rc.parts(out)[i], { recursive: true });
          }
          const { child, done } = startCli([...rc.args(out, false), '--force']);
          let exited = false;
          done.then(() => {
            exited = true;
          });
          await waitFor(
            () => exited || temporariesIn(sub).some((n) => n.includes('.tmp-')),
            60_000,
          );
          await new Promise((r) => setTimeout(r, delay));
          child.kill('SIGKILL');
          await done;
          return { sub, out };
        }),
      );
      expect((await runCliChild(['inspect', model, '--json'])).code).toBe(0); // the next run
      const seen: string[] = [];
      for (const { sub, out } of outcomes) {
        const now = existsSync(out) ? state(out) : 'absent';
        expect(['absent', oldState, newState]).toContain(now);
        expect(temporariesIn(sub)).toEqual([]);
        seen.push(now === oldState ? 'old' : now === newState ? 'new' : 'absent');
      }
      console.log(`${rc.name} replace killed at +${delays.join('/+')} ms: ${seen.join(', ')}`);
    }, 120_000);
  }

  it('quantize and merge: SIGINT / SIGTERM while writing remove the temporaries, exit 130 / 143', async () => {
    const runs = (['SIGINT', 'SIGTERM'] as const).flatMap((signal) =>
      cases.slice(0, 2).map(async (c) => {
        const sub = join(root, `${signal}-${c.name}`);
        const out = join(sub, c.output);
        await mkdir(sub, { recursive: true });
        const { child, done } = startCli(c.args(out));
        let exited = false;
        done.then(() => {
          exited = true;
        });
        await waitFor(() => exited || temporariesIn(sub).some((n) => n.includes('.tmp-')), 60_000);
        const caught = !exited && !existsSync(out);
        child.kill(signal);
        const r = await done;
        return { signal, c, sub, out, r, caught };
      }),
    );
    for (const { signal, c, sub, out, r, caught } of await Promise.all(runs)) {
      if (caught) {
        expect(r.code).toBe(signal === 'SIGINT' ? 130 : 143);
        expect(r.stderr).toContain(`stopped by ${signal}`);
        expect(existsSync(out)).toBe(false);
      }
      console.log(
        `${c.name} ${signal}: ${caught ? `exit ${r.code}` : 'finished before the signal'}`,
      );
      expect(temporariesIn(sub)).toEqual([]); // removed by the process itself, no next run
      expect(readdirSync(sub).filter((n) => n !== c.output)).toEqual([]);
    }
  }, 90_000);
});
