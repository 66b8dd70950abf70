import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { SafetensorsFile } from '../safetensors/reader.js';
import { writeSafetensors } from '../safetensors/writer.js';
import { resolveInsideFolder } from './file-kind.js';
import { assertOutputSeparate, claimOutput, guardOutput } from './output-guard.js';
import { OUTPUT_WRITER_KEY, outputMarker, readOutputWriter } from './output-marker.js';
import { lockContent, lockPath, removeStaleTemporaries } from './temporaries.js';

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'lora-guard-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** The error `fn` throws (fails the test when it throws nothing). */
function thrown(fn: () => unknown): unknown {
  try {
    fn();
  } catch (e) {
    return e;
  }
  throw new Error('expected an error');
}

/** The PID of a process that has already exited. */
function deadPid(): number {
  return spawnSync(process.execPath, ['-e', '0']).pid!;
}

describe('assertOutputSeparate', () => {
  it('refuses an output equal to, inside, or containing an input, also through a symlink', async () => {
    const model = join(dir, 'model');
    await mkdir(model);
    await symlink(model, join(dir, 'link'));
    expect(thrown(() => assertOutputSeparate(model, [model]))).toMatchObject({
      code: 'OUTPUT_OVERLAPS_INPUT',
    });
    expect(() => assertOutputSeparate(join(dir, 'link'), [model])).toThrow(/is the input/);
    expect(() => assertOutputSeparate(join(model, 'q4'), [model])).toThrow(/inside the input/);
    expect(() => assertOutputSeparate(dir, [join(dir, 'link')])).toThrow(/contains the input/);
    expect(() => assertOutputSeparate(join(dir, 'out'), [model])).not.toThrow();
    expect(() => assertOutputSeparate(join(dir, 'model2'), [model])).not.toThrow();
  });

  it('refuses the current folder or one containing it', () => {
    expect(thrown(() => assertOutputSeparate('.', []))).toMatchObject({
      code: 'OUTPUT_CONTAINS_CWD',
    });
  });
});

describe('guardOutput', () => {
  it('refuses an existing output without force, and FIFOs as inputs (without blocking)', async () => {
    const out = join(dir, 'out');
    await mkdir(out);
    expect(thrown(() => guardOutput(out, { inputs: [], writer: 'quantize' }))).toMatchObject({
      code: 'OUTPUT_EXISTS',
    });
    const model = join(dir, 'model');
    await mkdir(model);
    execFileSync('mkfifo', [join(model, 'model.safetensors')]);
    expect(
      thrown(() => guardOutput(join(dir, 'o2'), { inputs: [model], writer: 'quantize' })),
    ).toMatchObject({
      code: 'FILE_NOT_REGULAR',
      message: /named pipe/,
    });
    await expect(SafetensorsFile.open(join(model, 'model.safetensors'))).rejects.toMatchObject({
      code: 'FILE_NOT_REGULAR',
    });
  });

  it('lets one process write an output at a time; a dead holder is taken over', async () => {
    const out = join(dir, 'out');
    const sleeper = spawn('sleep', ['30']);
    try {
      await writeFile(lockPath(out), lockContent(sleeper.pid!));
      expect(thrown(() => claimOutput(out))).toMatchObject({
        code: 'OUTPUT_BUSY',
        message: new RegExp(`PID ${sleeper.pid}`),
      });
    } finally {
      sleeper.kill('SIGKILL');
    }
    await writeFile(lockPath(out), lockContent(deadPid()));
    const release = claimOutput(out);
    expect(await readFile(lockPath(out), 'utf8')).toBe(lockContent());
    release();
    expect(existsSync(lockPath(out))).toBe(false);
  });
});

/** A one-tensor safetensors file with the given metadata. */
async function weights(path: string, metadata: Record<string, string>): Promise<void> {
  await writeSafetensors(
    path,
    [{ name: 'w', dtype: 'f32', shape: [2], data: new Float32Array(2) }],
    {
      metadata,
    },
  );
}

/** Protobuf encoding by hand (varints, length-delimited fields), independent of our reader. */
function varintBytes(n: number): number[] {
  const out: number[] = [];
  while (n >= 0x80) {
    out.push((n % 0x80) | 0x80);
    n = Math.floor(n / 0x80);
  }
  return [...out, n];
}
function field(num: number, bytes: Uint8Array | string): Uint8Array {
  const b = typeof bytes === 'string' ? new TextEncoder().encode(bytes) : bytes;
  return Uint8Array.from([...varintBytes(num * 8 + 2), ...varintBytes(b.length), ...b]);
}
/** A ModelProto: ir_version 8, producer_name, a graph of `graphBytes` filler, then metadata_props. */
function modelProto(props: [string, string][], graphBytes = 3000): Uint8Array {
  const parts = [
    Uint8Array.from([...varintBytes(1 * 8 + 0), 8]),
    field(2, 'some exporter'),
    field(7, new Uint8Array(graphBytes).fill(0xab)),
    ...props.map(([k, v]) => field(14, Uint8Array.from([...field(1, k), ...field(2, v)]))),
  ];
  return Uint8Array.from(parts.flatMap((p) => [...p]));
}

describe('--force replaces only what the same command wrote (lora.writer marker)', () => {
  const guard = (out: string, writer: string, companions?: string[]) =>
    guardOutput(out, { inputs: [], force: true, writer, companions });

  it('reads the writer from safetensors metadata and from ONNX metadata_props past the graph', async () => {
    await weights(join(dir, 'a.safetensors'), { format: 'pt', ...outputMarker('quantize') });
    await weights(join(dir, 'hub.safetensors'), { format: 'pt' });
    await writeFile(
      join(dir, 'a.onnx'),
      modelProto([
        ['other', 'x'],
        [OUTPUT_WRITER_KEY, 'export-onnx'],
      ]),
    );
    await writeFile(join(dir, 'b.onnx'), modelProto([]));
    await writeFile(join(dir, 'junk.onnx'), new Uint8Array(5000).fill(0xff));
    expect(readOutputWriter(join(dir, 'a.safetensors'))).toBe('quantize');
    expect(readOutputWriter(join(dir, 'hub.safetensors'))).toBeUndefined();
    expect(readOutputWriter(join(dir, 'a.onnx'))).toBe('export-onnx');
    expect(readOutputWriter(join(dir, 'b.onnx'))).toBeUndefined();
    expect(readOutputWriter(join(dir, 'junk.onnx'))).toBeUndefined();
    expect(readOutputWriter(join(dir, 'missing.onnx'))).toBeUndefined();
  });

  it('replaces a folder the same command wrote; refuses one another command wrote, naming it and the files', async () => {
    const out = join(dir, 'out');
    await mkdir(out);
    await weights(join(out, 'model.safetensors'), { format: 'pt', ...outputMarker('quantize') });
    await writeFile(join(out, 'config.json'), '{}');
    guard(out, 'quantize')();
    expect(existsSync(lockPath(out))).toBe(false); // claimed, then released
    const e = thrown(() => guard(out, 'merge')) as { code: string; message: string };
    expect(e.code).toBe('OUTPUT_NOT_REPLACEABLE');
    expect(e.message).toContain('model.safetensors is written by `lora quantize`');
    expect(e.message).toContain(join(out, 'config.json'));
    expect(e.message).toContain('would delete 2 file(s)');
    expect(existsSync(lockPath(out))).toBe(false); // a refusal releases the claim
    expect(existsSync(join(out, 'model.safetensors'))).toBe(true);
  });

  it('refuses a hub-like folder (no marker), and one whose weights files disagree', async () => {
    const hub = join(dir, 'hub');
    await mkdir(hub);
    await weights(join(hub, 'model.safetensors'), { format: 'pt' });
    await writeFile(join(hub, 'config.json'), '{}');
    expect(() => guard(hub, 'merge')).toThrow(/model\.safetensors is not written by lora/);
    const bare = join(dir, 'bare'); // no weights file at all
    await mkdir(bare);
    await writeFile(join(bare, 'notes.txt'), 'mine');
    expect(() => guard(bare, 'merge')).toThrow(
      /bare holds no weights file written by `lora merge`/,
    );
    const mixed = join(dir, 'mixed');
    await mkdir(mixed);
    await weights(join(mixed, 'a.safetensors'), outputMarker('merge'));
    await weights(join(mixed, 'sub', 'b.safetensors'), outputMarker('extract'));
    expect(() => guard(mixed, 'merge')).toThrow(/b\.safetensors is written by `lora extract`/);
    // unmarked files a command copied from its input (an .onnx, a consolidated.safetensors) do not
    // make its own output unrecognisable; the file set is checked when the new folder replaces it
    const copied = join(dir, 'copied');
    await mkdir(copied);
    await weights(join(copied, 'model.safetensors'), outputMarker('quantize'));
    await weights(join(copied, 'consolidated.safetensors'), { format: 'pt' });
    await writeFile(join(copied, 'model.onnx'), modelProto([]));
    guard(copied, 'quantize')();
    expect(() => guard(copied, 'merge')).toThrow(
      /model\.safetensors is written by `lora quantize`/,
    );
  });

  it('single files: replaces an .onnx export-onnx wrote, refuses other bytes or an unmarked ONNX', async () => {
    const ours = join(dir, 'ours.onnx');
    await writeFile(ours, modelProto([[OUTPUT_WRITER_KEY, 'export-onnx']]));
    guard(ours, 'export-onnx')();
    const theirs = join(dir, 'theirs.onnx');
    await writeFile(theirs, modelProto([]));
    expect(() => guard(theirs, 'export-onnx')).toThrow(/theirs\.onnx is not written by lora/);
    const bytes = join(dir, 'bytes.onnx');
    await writeFile(bytes, 'not a model');
    expect(() => guard(bytes, 'export-onnx')).toThrow(/not written by lora/);
    const report = join(dir, 'report.json'); // a small JSON report: its top-level lora.writer
    await writeFile(report, JSON.stringify({ [OUTPUT_WRITER_KEY]: 'train', loss: 1 }));
    guard(report, 'train')();
    expect(() => guard(report, 'eval')).toThrow(/report\.json is written by `lora train`/);
    await writeFile(report, '{"lora.writer": ');
    expect(() => guard(report, 'train')).toThrow(/report\.json is not written by lora/);
    const notes = join(dir, 'notes.txt'); // a file kind that carries no marker
    await writeFile(notes, 'x');
    expect(() => guard(notes, 'export-onnx')).toThrow(/would delete 1 file\(s\): .*notes\.txt/);
  });

  it('the external-data pair is one output: .data goes only with a recognised model', async () => {
    const model = join(dir, 'm.onnx');
    const data = `${model}.data`;
    await writeFile(data, new Uint8Array(64));
    const e = thrown(() => guard(model, 'export-onnx', [data])) as { message: string };
    expect(e.message).toContain(`${data} belongs to no ${model} written by \`lora export-onnx\``);
    expect(
      thrown(() => guardOutput(model, { inputs: [], writer: 'export-onnx', companions: [data] })),
    ).toMatchObject({
      code: 'OUTPUT_EXISTS',
      details: { path: data },
    });
    await writeFile(model, modelProto([[OUTPUT_WRITER_KEY, 'export-onnx']]));
    guard(model, 'export-onnx', [data])();
    await writeFile(model, modelProto([[OUTPUT_WRITER_KEY, 'train']]));
    expect(() => guard(model, 'export-onnx', [data])).toThrow(/would delete 2 file\(s\)/);
  });
});

describe('removeStaleTemporaries', () => {
  it("removes dead processes' temporaries, puts back an .old whose target is missing, keeps live ones", async () => {
    const dead = deadPid();
    await mkdir(join(dir, `.a.tmp-${dead}-0123abcd`));
    await writeFile(join(dir, `.a.tmp-${dead}-0123abcd`, 'x'), 'partial');
    await mkdir(join(dir, `.b.old-${dead}-0123abcd`)); // killed between the renames of a replace
    await writeFile(join(dir, `.b.old-${dead}-0123abcd`, 'w'), 'previous output');
    await mkdir(join(dir, 'c'));
    await mkdir(join(dir, `.c.old-${dead}-0123abcd`)); // killed after the new c was in place
    await writeFile(join(dir, `.d.tmp-${process.pid}-0123abcd`), 'mine, in progress');
    await writeFile(join(dir, '.e.lock'), lockContent(dead));
    await writeFile(join(dir, '.f.lock'), `${dead}\n`); // not one of ours: kept
    await writeFile(join(dir, '.not-ours.tmp-x'), 'unrelated');
    const removed = removeStaleTemporaries([dir]);
    expect(removed).toHaveLength(4);
    expect((await readdir(dir)).sort()).toEqual([
      `.d.tmp-${process.pid}-0123abcd`,
      '.f.lock',
      '.not-ours.tmp-x',
      'b',
      'c',
    ]);
    expect(await readFile(join(dir, 'b', 'w'), 'utf8')).toBe('previous output');
  });

  it("follows a dead process's journal to temporaries in any folder", async () => {
    const dead = deadPid();
    const elsewhere = join(dir, 'elsewhere');
    await mkdir(elsewhere);
    const tmp = join(elsewhere, `.out.tmp-${dead}-89abcdef`);
    const done = join(elsewhere, `.out2.tmp-${dead}-89abcdef`);
    await mkdir(tmp);
    await writeFile(done, 'renamed into place before the kill: not in the pending set');
    const journals = join(tmpdir(), '.lora-temporaries');
    await mkdir(journals, { recursive: true });
    await writeFile(join(journals, String(dead)), `+${tmp}\n+${done}\n-${done}\n`);
    removeStaleTemporaries();
    expect(existsSync(tmp)).toBe(false);
    expect(existsSync(done)).toBe(true);
    expect(existsSync(join(journals, String(dead)))).toBe(false);
  });
});

describe('resolveInsideFolder', () => {
  it('accepts names inside the folder and refuses absolute paths and .. escapes', () => {
    expect(resolveInsideFolder('/m', 'model-00001.safetensors', 'index')).toBe(
      '/m/model-00001.safetensors',
    );
    expect(resolveInsideFolder('/m', 'sub/../x.safetensors', 'index')).toBe('/m/x.safetensors');
    for (const bad of ['../outside/x.safetensors', '/etc/passwd', 'a/../../x', '..', '']) {
      expect(thrown(() => resolveInsideFolder('/m', bad, 'index'))).toMatchObject({
        code: 'PATH_OUTSIDE_FOLDER',
      });
    }
  });
});
