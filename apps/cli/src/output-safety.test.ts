import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { copyFile, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { readOutputWriter, readSafetensorsHeader } from '@lora/core';
import { Command } from 'commander';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  hashTree,
  writeSyntheticAdapter,
  writeSyntheticLlama,
} from './test-utils/synthetic-model.js';
import { commands } from './commands/index.js';
import { runCli } from './test-utils/run-cli.js';

/**
 * Outputs never destroy inputs or unrelated data; inputs that would block (FIFOs) or escape
 * their folder (index shards) are refused; every command takes --verbose.
 */

let root: string;
let model: string;
let adapter: string;
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'lora-output-safety-'));
  model = join(root, 'model');
  adapter = join(root, 'adapter');
  await writeSyntheticLlama(model);
  await writeSyntheticAdapter(adapter);
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

describe('outputs never destroy inputs', () => {
  it('refuses an output equal to, inside or containing an input, before reading anything', async () => {
    const before = { model: hashTree(model), adapter: hashTree(adapter) };
    const cases: [string[], RegExp][] = [
      [['quantize', model, '-o', model, '--force'], /is the input/],
      [['merge', '--base', model, '--adapter', adapter, '-o', adapter, '--force'], /is the input/],
      [['quantize', model, '-o', join(model, 'q4')], /is inside the input/],
      [['quantize', model, '-o', root, '--force'], /contains the input/],
      [['combine', '--adapter', adapter, '-o', adapter, '--force'], /is the input/],
      [['extract', '--base', model, '--tuned', model, '--rank', '2', '-o', model], /is the input/],
      [['export-onnx', '--model', model, '-o', join(model, 'm.onnx')], /is inside the input/],
      [['dequantize', model, '-o', model, '--force'], /is the input/],
      [['unmerge', '--merged', model, '--adapter', adapter, '-o', adapter], /is the input/],
    ];
    for (const [args, message] of cases) {
      const r = await runCli(args);
      expect(r.code, args.join(' ')).toBe(2);
      expect(r.stderr).toMatch(message);
      expect(r.stderr.trim().split('\n')).toHaveLength(1); // one sentence, no stack
    }
    expect(hashTree(model)).toEqual(before.model);
    expect(hashTree(adapter)).toEqual(before.adapter);
  });

  it('refuses the current folder as output (-o . --force)', async () => {
    const cwd = process.cwd();
    const work = join(root, 'cwd');
    await mkdir(work);
    process.chdir(work);
    try {
      const r = await runCli(['quantize', model, '-o', '.', '--force']);
      expect(r.code).toBe(2);
      expect(r.stderr).toMatch(/is the current folder or contains it/);
      expect(await readdir(work)).toEqual([]); // no temporary left in the working folder
    } finally {
      process.chdir(cwd);
    }
  });

  it('--force replaces an earlier output of the command, never a folder holding other files', async () => {
    const out = join(root, 'q');
    expect((await runCli(['quantize', model, '-o', out, '--format', 'fp4', '--quiet'])).code).toBe(
      0,
    );
    const fp4 = hashTree(out);
    const again = await runCli(['quantize', model, '-o', out, '--quiet']);
    expect(again.code).toBe(2);
    expect(again.stderr).toMatch(/already exists.*--force/);
    await writeFile(join(out, 'notes.txt'), 'my notes');
    const refused = await runCli(['quantize', model, '-o', out, '--force', '--quiet']);
    expect(refused.code).toBe(2);
    expect(refused.stderr).toMatch(/would delete 1 file\(s\) .*notes\.txt/);
    expect(await readFile(join(out, 'notes.txt'), 'utf8')).toBe('my notes');
    await rm(join(out, 'notes.txt'));
    expect(hashTree(out)).toEqual(fp4); // untouched by the refused run
    const replaced = await runCli(['quantize', model, '-o', out, '--force', '--quiet']);
    expect(replaced.code).toBe(0);
    expect(hashTree(out)['model.safetensors']).not.toBe(fp4['model.safetensors']); // nf4 now
    expect((await readdir(root)).filter((n) => n.startsWith('.q.'))).toEqual([]);
  });
});

describe('--force recognises the command that wrote the output (lora.writer)', () => {
  const writerOf = async (file: string) =>
    (await readSafetensorsHeader(file)).metadata['lora.writer'];

  it('every weights writer records itself beside {"format": "pt"}; the same command replaces its own output', async () => {
    const q = join(root, 'mark-q');
    const m = join(root, 'mark-m');
    const c = join(root, 'mark-c');
    for (const args of [
      ['quantize', model, '-o', q, '--quiet'],
      ['merge', '--base', model, '--adapter', adapter, '-o', m, '--quiet'],
      ['combine', '--adapter', adapter, '--adapter', adapter, '-o', c, '--quiet'],
    ]) {
      expect((await runCli(args)).code, args.join(' ')).toBe(0);
      expect((await runCli([...args, '--force'])).code, `${args.join(' ')} --force`).toBe(0);
    }
    expect((await readSafetensorsHeader(join(q, 'model.safetensors'))).metadata).toMatchObject({
      format: 'pt',
      'lora.writer': 'quantize',
    });
    expect(await writerOf(join(m, 'model.safetensors'))).toBe('merge');
    expect(await writerOf(join(m, 'unmerge-residual.safetensors'))).toBe('merge');
    expect(await writerOf(join(c, 'adapter_model.safetensors'))).toBe('combine');
    // merging onto a base lora quantize wrote: the output names merge, not the base's writer
    const mq = join(root, 'mark-mq');
    expect((await runCli(['dequantize', q, '-o', join(root, 'mark-d'), '--quiet'])).code).toBe(0);
    expect(await writerOf(join(root, 'mark-d', 'model.safetensors'))).toBe('dequantize');
    expect(
      (await runCli(['merge', '--base', join(root, 'mark-d'), '--adapter', adapter, '-o', mq]))
        .code,
    ).toBe(0);
    expect(await writerOf(join(mq, 'model.safetensors'))).toBe('merge');
  });

  it("refuses another command's folder with the same file names, naming the writer; and a hub-like folder", async () => {
    const q = join(root, 'same-q');
    const target = join(root, 'same-target');
    expect((await runCli(['quantize', model, '-o', q, '--quiet'])).code).toBe(0);
    expect((await runCli(['quantize', model, '-o', target, '--quiet'])).code).toBe(0);
    const before = hashTree(target);
    // dequantize writes the same file names quantize wrote: only the marker tells them apart
    const r = await runCli(['dequantize', q, '-o', target, '--force', '--quiet']);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('model.safetensors is written by `lora quantize`. Replacing it');
    expect(r.stderr).toMatch(/would delete \d+ file\(s\): .*config\.json/);
    expect(hashTree(target)).toEqual(before);

    const hub = join(root, 'hub-like'); // a downloaded model: same files, no marker
    await mkdir(hub);
    for (const f of await readdir(model)) await copyFile(join(model, f), join(hub, f));
    const hubBefore = hashTree(hub);
    const h = await runCli(['quantize', model, '-o', hub, '--force', '--quiet']);
    expect(h.code).toBe(2);
    expect(h.stderr).toContain(`${join(hub, 'model.safetensors')} is not written by lora`);
    expect(h.stderr).toMatch(
      /delete these files by hand.*lora versions before the lora\.writer marker/,
    );
    expect(hashTree(hub)).toEqual(hubBefore);
    expect((await readdir(root)).filter((n) => n.startsWith('.hub-like.'))).toEqual([]);
  });

  it('single .onnx files: its own export is replaced, other bytes are not; .onnx + .data are one output', async () => {
    const onnx = join(root, 'single.onnx');
    const exportTo = (out: string, ...more: string[]) =>
      runCli(['export-onnx', '--model', model, '-o', out, '--quiet', ...more]);
    expect((await exportTo(onnx)).code).toBe(0);
    expect(readOutputWriter(onnx)).toBe('export-onnx');
    expect((await exportTo(onnx, '--force')).code).toBe(0);

    const foreign = join(root, 'foreign.onnx');
    await writeFile(foreign, 'not a model of ours');
    const f = await runCli(['export-onnx', '--model', model, '-o', foreign, '--force']);
    expect(f.code).toBe(2);
    expect(f.stderr).toContain(`${foreign} is not written by lora`);
    expect(await readFile(foreign, 'utf8')).toBe('not a model of ours');

    const pair = join(root, 'pair.onnx');
    expect((await exportTo(pair, '--external-data')).code).toBe(0);
    expect(existsSync(`${pair}.data`)).toBe(true);
    expect((await exportTo(pair, '--external-data', '--force')).code).toBe(0);
    // a model file that is not ours: the pair is refused whole, naming both files
    await writeFile(pair, 'someone else');
    const dataBefore = hashTree(root)['pair.onnx.data'];
    const p = await exportTo(pair, '--external-data', '--force');
    expect(p.code).toBe(2);
    expect(p.stderr).toMatch(/would delete 2 file\(s\): .*pair\.onnx, .*pair\.onnx\.data/);
    expect(hashTree(root)['pair.onnx.data']).toBe(dataBefore);
    // a stray .data with no model of ours beside it
    const stray = join(root, 'stray.onnx');
    await writeFile(`${stray}.data`, new Uint8Array(16));
    const s = await exportTo(stray, '--force');
    expect(s.code).toBe(2);
    expect(s.stderr).toContain(
      `${stray}.data belongs to no ${stray} written by \`lora export-onnx\``,
    );
    expect(existsSync(stray)).toBe(false);
  });

  it('train: its adapter folder and its --report file are replaced by train only', async () => {
    const fixture = fileURLToPath(
      new URL('../../../packages/train/src/testdata/trajectory/', import.meta.url),
    );
    const out = join(root, 'trained');
    const report = join(root, 'report.json');
    const train = (...more: string[]) =>
      runCli([
        'train',
        '--model',
        join(fixture, 'model'),
        '--data',
        join(fixture, 'train.jsonl'),
        '--steps',
        '1',
        '--threads',
        '1',
        '--quiet',
        '-o',
        out,
        '--report',
        report,
        ...more,
      ]);
    expect((await train()).code).toBe(0);
    expect(await writerOf(join(out, 'adapter_model.safetensors'))).toBe('train');
    expect(JSON.parse(await readFile(report, 'utf8'))['lora.writer']).toBe('train');
    expect((await train('--force')).code).toBe(0);
    await writeFile(report, '{"mine": true}\n'); // a JSON file train did not write
    const r = await train('--force');
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(`${report} is not written by lora`);
    expect(await readFile(report, 'utf8')).toBe('{"mine": true}\n');
  });

  it('unmerge restores the base byte for byte, header included, so --force never replaces its output', async () => {
    const m = join(root, 'um-merged');
    const restored = join(root, 'um-restored');
    expect((await runCli(['merge', '--base', model, '--adapter', adapter, '-o', m])).code).toBe(0);
    const unmerge = (...more: string[]) =>
      runCli(['unmerge', '--merged', m, '--adapter', adapter, '-o', restored, ...more]);
    expect((await unmerge()).code).toBe(0);
    expect(hashTree(restored)['model.safetensors']).toBe(hashTree(model)['model.safetensors']);
    const r = await unmerge('--force');
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(`${join(restored, 'model.safetensors')} is not written by lora`);
  });

  it('single .safetensors files: quantize replaces its own file, merge its file + residual pair', async () => {
    const base = join(model, 'model.safetensors');
    const q = join(root, 'one-q.safetensors');
    expect((await runCli(['quantize', base, '-o', q, '--quiet'])).code).toBe(0);
    expect(await writerOf(q)).toBe('quantize');
    expect((await runCli(['quantize', base, '-o', q, '--force', '--quiet'])).code).toBe(0);
    const d = await runCli(['dequantize', q, '-o', join(root, 'one-q2.safetensors')]);
    expect(d.code).toBe(0);
    const cross = await runCli([
      'quantize',
      base,
      '-o',
      join(root, 'one-q2.safetensors'),
      '--force',
    ]);
    expect(cross.code).toBe(2);
    expect(cross.stderr).toContain('one-q2.safetensors is written by `lora dequantize`');

    const m = join(root, 'one-m.safetensors');
    const residual = join(root, 'one-m.unmerge-residual.safetensors');
    const merge = (...more: string[]) =>
      runCli(['merge', '--base', base, '--adapter', adapter, '-o', m, '--quiet', ...more]);
    expect((await merge()).code).toBe(0);
    expect(await writerOf(residual)).toBe('merge');
    expect((await merge('--force')).code).toBe(0);
    await rm(m); // the residual alone is left: without --force it is an existing output
    const again = await merge();
    expect(again.code).toBe(2);
    expect(again.stderr).toContain(`${residual} already exists`);
  });
});

describe('inputs that would block or escape', () => {
  it('a FIFO where a model file is expected is refused at once by every reader', async () => {
    const fifoModel = join(root, 'fifo-model');
    await mkdir(fifoModel);
    await copyFile(join(model, 'config.json'), join(fifoModel, 'config.json'));
    execFileSync('mkfifo', [join(fifoModel, 'model.safetensors')]);
    for (const args of [
      ['inspect', fifoModel],
      ['quantize', fifoModel, '-o', join(root, 'fq')],
      ['merge', '--base', fifoModel, '--adapter', adapter, '-o', join(root, 'fm')],
      ['generate', '--model', fifoModel, '--prompt', 'hi', '--max-tokens', '1'],
      ['export-onnx', '--model', fifoModel, '-o', join(root, 'f.onnx')],
      ['inspect', join(fifoModel, 'model.safetensors')],
    ]) {
      const r = await runCli(args);
      expect(r.code, args.join(' ')).toBe(2);
      expect(r.stderr).toMatch(/is a named pipe \(FIFO\), not a regular file/);
    }
  });

  it('shards named outside the model folder by model.safetensors.index.json are never read', async () => {
    const evil = join(root, 'evil');
    const outside = join(root, 'outside');
    await mkdir(evil);
    await mkdir(outside);
    await copyFile(join(model, 'config.json'), join(evil, 'config.json'));
    await copyFile(join(model, 'model.safetensors'), join(outside, 'x.safetensors'));
    const { readSafetensorsHeader } = await import('@lora/core');
    const names = (await readSafetensorsHeader(join(outside, 'x.safetensors'))).entries.map(
      (e) => e.name,
    );
    const weightMap = Object.fromEntries(names.map((n) => [n, '../outside/x.safetensors']));
    await writeFile(
      join(evil, 'model.safetensors.index.json'),
      JSON.stringify({ metadata: {}, weight_map: weightMap }),
    );
    const cases: [string[], RegExp][] = [
      [['generate', '--model', evil, '--prompt', 'hi', '--max-tokens', '1'], /outside the folder/],
      [['export-onnx', '--model', evil, '-o', join(root, 'evil.onnx')], /outside the folder/],
      [['inspect', evil], /not in the folder/],
      [['quantize', evil, '-o', join(root, 'evil-q')], /no \.safetensors file/],
      [
        ['merge', '--base', evil, '--adapter', adapter, '-o', join(root, 'evil-m')],
        /not in the folder/,
      ],
    ];
    for (const [args, message] of cases) {
      const r = await runCli(args);
      expect(r.code, args.join(' ')).toBe(2);
      expect(r.stderr).toMatch(message);
    }
    expect((await readdir(root)).filter((n) => n.startsWith('evil') && n !== 'evil')).toEqual([]);
  });
});

describe('--verbose', () => {
  it('every command accepts it, and it adds the stack trace to an error', async () => {
    const program = new Command('lora');
    for (const register of commands) register(program);
    for (const c of program.commands) {
      const help = await runCli([c.name(), '--help']);
      expect(help.stdout, c.name()).toContain('--verbose');
    }
    const plain = await runCli(['quantize', model, '-o', join(root, 'v'), '--block-size', '7']);
    expect(plain.code).toBe(2);
    expect(plain.stderr).not.toMatch(/\n\s+at /);
    const verbose = await runCli([
      'quantize',
      model,
      '-o',
      join(root, 'v'),
      '--block-size',
      '7',
      '--verbose',
    ]);
    expect(verbose.code).toBe(2);
    expect(verbose.stderr).toMatch(/Block size 7[\s\S]*\n\s+at /);
  });
});
