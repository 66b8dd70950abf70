import { existsSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm, writeFile, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  type FloatDType,
  readSafetensors,
  type Tensor,
  tensor,
  toFloat64Array,
  writeSafetensors,
} from '@lora/core';
import { afterAll, describe, expect, it } from 'vitest';
import type { Adapter } from '../adapter.js';
import { isLoraErrorWithCode } from '../test-utils/errors.js';
import { randomTensor, syntheticAdapter } from '../test-utils/synthetic.js';
import { mergeIntoModel } from './merge-model.js';
import { unmergeModel } from './unmerge-model.js';

const tmpDirs: string[] = [];
afterAll(async () => {
  for (const d of tmpDirs) await rm(d, { recursive: true, force: true });
});
async function tmp(): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'lora-merge-'));
  tmpDirs.push(d);
  return d;
}

/** A model folder: safetensors + config.json + a tokenizer file. */
async function writeModel(dir: string, tensors: Map<string, Tensor>): Promise<void> {
  await mkdir(dir, { recursive: true });
  await writeSafetensors(join(dir, 'model.safetensors'), tensors, { metadata: { format: 'pt' } });
  await writeFile(join(dir, 'config.json'), '{"model_type": "test"}\n');
  await writeFile(join(dir, 'tokenizer.json'), '{"version": "1.0"}\n');
}

async function sameFolder(a: string, b: string): Promise<void> {
  const fa = (await readdir(a)).sort();
  const fb = (await readdir(b)).sort();
  expect(fb).toEqual(fa);
  for (const f of fa)
    expect((await readFile(join(b, f))).equals(await readFile(join(a, f))), f).toBe(true);
}

// Two adapters on real shapes: a [256, 512] linear, and a GPT-2 style c_attn stored [768, 2304]
// (fan_in_fan_out). The second adapter uses rslora.
function adapters(): { plain: Adapter; conv: Adapter } {
  const plain = syntheticAdapter(
    { 'layers.0.proj': { in: 512, out: 256 } },
    { r: 16, lora_alpha: 32 },
    1,
  );
  const conv = syntheticAdapter(
    { 'h.0.attn.c_attn': { in: 768, out: 2304 } },
    { r: 8, lora_alpha: 16, fan_in_fan_out: true, use_rslora: true },
    2,
  );
  return { plain, conv };
}

describe('merge then unmerge gives back the base bytes exactly', () => {
  for (const dtype of ['f32', 'f16', 'bf16'] as FloatDType[]) {
    for (const outDtype of [undefined, dtype === 'f32' ? 'bf16' : 'f32'] as (
      | FloatDType
      | undefined
    )[]) {
      it(`${dtype} base${outDtype ? `, merged as ${outDtype}` : ''}`, async () => {
        const dir = await tmp();
        const base = join(dir, 'base');
        await writeModel(
          base,
          new Map<string, Tensor>([
            ['layers.0.proj.weight', randomTensor(11, [256, 512], dtype)],
            ['h.0.attn.c_attn.weight', randomTensor(12, [768, 2304], dtype, 0.2)],
            ['h.0.ln.weight', randomTensor(13, [768], dtype)],
            ['position_ids', tensor('i64', [4], BigInt64Array.from([0n, 1n, 2n, 3n]))],
          ]),
        );
        const before = await readFile(join(base, 'model.safetensors'));
        const { plain, conv } = adapters();
        const merged = join(dir, 'merged');
        const report = await mergeIntoModel(
          base,
          [{ adapter: plain }, { adapter: conv, weight: 0.5 }],
          merged,
          { dtype: outDtype, residual: true }, // f32 -> bf16 narrows: the residual is opt-in there
        );
        expect(report.merged.map((m) => m.tensor).sort()).toEqual([
          'h.0.attn.c_attn.weight',
          'layers.0.proj.weight',
        ]);
        expect(report.residual!.bytes).toBeGreaterThan(0);
        expect((await readFile(join(base, 'model.safetensors'))).equals(before)).toBe(true); // input untouched

        const m = (await readSafetensors(join(merged, 'model.safetensors'))).tensors;
        expect(m.get('layers.0.proj.weight')!.dtype).toBe(outDtype ?? dtype);
        expect(m.get('position_ids')!.dtype).toBe('i64');
        expect(existsSync(join(merged, 'unmerge-residual.safetensors'))).toBe(true);

        const restored = join(dir, 'restored');
        const u = await unmergeModel(merged, [{ adapter: plain }, { adapter: conv }], restored);
        expect(u.unmerged).toBeGreaterThanOrEqual(2);
        await sameFolder(base, restored);
      });
    }
  }

  it('the merged weights are the same bits with and without the residual (rank 20: two 16-rank chunks)', async () => {
    const dir = await tmp();
    const basePath = join(dir, 'base.safetensors');
    await writeSafetensors(
      basePath,
      new Map([['layers.0.proj.weight', randomTensor(23, [64, 80], 'f16')]]),
    );
    const a = syntheticAdapter(
      { 'layers.0.proj': { in: 80, out: 64 } },
      { r: 20, lora_alpha: 20 },
      3,
    );
    await mergeIntoModel(basePath, [{ adapter: a }], join(dir, 'with.safetensors'));
    await mergeIntoModel(basePath, [{ adapter: a }], join(dir, 'without.safetensors'), {
      residual: false,
    });
    expect(
      (await readFile(join(dir, 'with.safetensors'))).equals(
        await readFile(join(dir, 'without.safetensors')),
      ),
    ).toBe(true);
  });

  it('a single .safetensors file: residual beside the output, file restored byte for byte', async () => {
    const dir = await tmp();
    const basePath = join(dir, 'base.safetensors');
    await writeSafetensors(
      basePath,
      new Map([['layers.0.proj.weight', randomTensor(21, [256, 512], 'f16')]]),
    );
    const { plain } = adapters();
    const out = join(dir, 'merged.safetensors');
    await mergeIntoModel(basePath, [{ adapter: plain }], out);
    expect(existsSync(join(dir, 'merged.unmerge-residual.safetensors'))).toBe(true);
    await unmergeModel(out, [{ adapter: plain }], join(dir, 'restored.safetensors'));
    expect(
      (await readFile(join(dir, 'restored.safetensors'))).equals(await readFile(basePath)),
    ).toBe(true);
  });

  it('unmerge refuses a different adapter and writes nothing', async () => {
    const dir = await tmp();
    const basePath = join(dir, 'base.safetensors');
    await writeSafetensors(
      basePath,
      new Map([['layers.0.proj.weight', randomTensor(21, [256, 512])]]),
    );
    const { plain } = adapters();
    await mergeIntoModel(basePath, [{ adapter: plain }], join(dir, 'merged.safetensors'));
    const other = syntheticAdapter(
      { 'layers.0.proj': { in: 512, out: 256 } },
      { r: 16, lora_alpha: 32 },
      99,
    );
    const err = await unmergeModel(
      join(dir, 'merged.safetensors'),
      [{ adapter: other }],
      join(dir, 'restored.safetensors'),
    ).catch((e) => e);
    expect(isLoraErrorWithCode(err, 'UNMERGE_ADAPTER_MISMATCH')).toBe(true);
    expect(existsSync(join(dir, 'restored.safetensors'))).toBe(false);
  });
});

describe('merge reports PEFT target-matching findings', () => {
  it('warns when the config targets base modules that have no weights (missing adapter keys)', async () => {
    const dir = await tmp();
    const base = join(dir, 'base');
    await writeModel(
      base,
      new Map([
        ['layers.0.proj.weight', randomTensor(61, [16, 8])],
        ['layers.1.proj.weight', randomTensor(62, [16, 8])],
      ]),
    );
    const a = syntheticAdapter({ 'layers.0.proj': { in: 8, out: 16 } }, { r: 2, lora_alpha: 2 });
    const report = await mergeIntoModel(base, [{ adapter: a, label: 'half' }], join(dir, 'm'), {
      residual: false,
    });
    expect(report.warnings.length).toBe(1);
    expect(report.warnings[0]).toContain('half');
    expect(report.warnings[0]).toContain('layers.1.proj');
    expect(report.warnings[0]).toContain('missing adapter keys');
  });
});

describe('module names', () => {
  it('an adapter named on the task model (transformer.h.0...) merges into a GPT-2 checkpoint (h.0...)', async () => {
    const dir = await tmp();
    const W = randomTensor(71, [8, 24]); // Conv1D [in, out]
    await writeSafetensors(join(dir, 'gpt2.safetensors'), new Map([['h.0.attn.c_attn.weight', W]]));
    const a = syntheticAdapter(
      { 'transformer.h.0.attn.c_attn': { in: 8, out: 24 } },
      { r: 2, lora_alpha: 4, fan_in_fan_out: true },
    );
    const report = await mergeIntoModel(
      join(dir, 'gpt2.safetensors'),
      [{ adapter: a }],
      join(dir, 'm.safetensors'),
      { residual: false },
    );
    expect(report.merged).toEqual([
      { tensor: 'h.0.attn.c_attn.weight', modules: ['transformer.h.0.attn.c_attn'], dora: false },
    ]);
    const m = a.modules.get('transformer.h.0.attn.c_attn')!;
    expectClose(
      (await readSafetensors(join(dir, 'm.safetensors'))).tensors.get('h.0.attn.c_attn.weight')!,
      refDelta(W, m.A, m.B, 2, true),
    );
  });
});

describe('merge refuses bad input and writes nothing', () => {
  async function setup() {
    const dir = await tmp();
    const base = join(dir, 'base');
    await writeModel(base, new Map([['layers.0.proj.weight', randomTensor(31, [256, 512])]]));
    return { dir, base, out: join(dir, 'merged') };
  }

  async function noLeftovers(dir: string, out: string) {
    expect(existsSync(out)).toBe(false);
    expect((await readdir(dir)).filter((f) => f.startsWith('.'))).toEqual([]); // no temporary folder left
  }

  it('shape mismatch: names the module, the expected and the actual shape', async () => {
    const { dir, base, out } = await setup();
    const wrong = syntheticAdapter(
      { 'layers.0.proj': { in: 256, out: 512 } },
      { r: 4, lora_alpha: 8 },
    );
    const err = await mergeIntoModel(base, [{ adapter: wrong, label: 'wrong-adapter' }], out).catch(
      (e) => e,
    );
    expect(isLoraErrorWithCode(err, 'MERGE_SHAPE_MISMATCH')).toBe(true);
    expect(err.message).toContain('layers.0.proj');
    expect(err.message).toContain('[256, 512]');
    expect(err.message).toContain('[512, 256]');
    expect(err.message).toContain('wrong-adapter');
    await noLeftovers(dir, out);
  });

  it('missing module', async () => {
    const { dir, base, out } = await setup();
    const a = syntheticAdapter(
      { 'layers.0.proj': { in: 512, out: 256 }, 'layers.1.proj': { in: 512, out: 256 } },
      { r: 4, lora_alpha: 8 },
    );
    const err = await mergeIntoModel(base, [{ adapter: a }], out).catch((e) => e);
    expect(isLoraErrorWithCode(err, 'MERGE_MODULE_MISSING')).toBe(true);
    expect(err.message).toContain('layers.1.proj');
    await noLeftovers(dir, out);
  });

  it('NaN in the adapter', async () => {
    const { dir, base, out } = await setup();
    const a = syntheticAdapter({ 'layers.0.proj': { in: 512, out: 256 } }, { r: 4, lora_alpha: 8 });
    (a.modules.get('layers.0.proj')!.B.data as Float32Array)[37] = Number.NaN;
    const err = await mergeIntoModel(base, [{ adapter: a }], out).catch((e) => e);
    expect(isLoraErrorWithCode(err, 'MERGE_NOT_FINITE')).toBe(true);
    await noLeftovers(dir, out);
  });

  it('overflow to Inf when rounding to f16', async () => {
    const { dir, base, out } = await setup();
    const a = syntheticAdapter(
      { 'layers.0.proj': { in: 512, out: 256 } },
      { r: 4, lora_alpha: 4e7 },
    );
    const err = await mergeIntoModel(base, [{ adapter: a }], out, { dtype: 'f16' }).catch((e) => e);
    expect(isLoraErrorWithCode(err, 'MERGE_NOT_FINITE')).toBe(true);
    await noLeftovers(dir, out);
  });

  it('an existing output without overwrite', async () => {
    const { base, out } = await setup();
    await mkdir(out);
    await writeFile(join(out, 'keep.txt'), 'mine');
    const a = syntheticAdapter({ 'layers.0.proj': { in: 512, out: 256 } }, { r: 4, lora_alpha: 8 });
    const err = await mergeIntoModel(base, [{ adapter: a }], out).catch((e) => e);
    expect(isLoraErrorWithCode(err, 'OUTPUT_EXISTS')).toBe(true);
    expect(await readFile(join(out, 'keep.txt'), 'utf8')).toBe('mine');
  });
});

/** float64 W + s·B·A in the stored layout, written independently for these tests. */
function refDelta(W: Tensor, A: Tensor, B: Tensor, s: number, transposed: boolean): Float64Array {
  const w = Float64Array.from(toFloat64Array(W));
  const a = toFloat64Array(A);
  const b = toFloat64Array(B);
  const [r, inF] = A.shape;
  const outF = B.shape[0];
  for (let o = 0; o < outF; o++)
    for (let i = 0; i < inF; i++) {
      let acc = 0;
      for (let k = 0; k < r; k++) acc += b[o * r + k] * a[k * inF + i];
      w[transposed ? i * outF + o : o * inF + i] += s * acc;
    }
  return w;
}

function expectClose(got: Tensor, want: Float64Array, rel = 2 ** -22) {
  const g = toFloat64Array(got);
  expect(g.length).toBe(want.length);
  let worst = 0;
  for (let i = 0; i < want.length; i++)
    worst = Math.max(worst, Math.abs(g[i] - want[i]) / Math.max(Math.abs(want[i]), 1e-3));
  expect(worst).toBeLessThan(rel);
}

describe('merge variants against float64 references', () => {
  it("DoRA: W' = m / ||W + dW||_row · (W + dW), also with fan_in_fan_out; unmerge exact", async () => {
    const dir = await tmp();
    const W1 = randomTensor(41, [64, 96]);
    const W2 = randomTensor(42, [96, 48]); // fan_in_fan_out: stored [in, out]
    const base = join(dir, 'base');
    await writeModel(base, new Map([['a.q.weight', W1]]));
    const dora = syntheticAdapter(
      { 'a.q': { in: 96, out: 64, dora: true } },
      { r: 4, lora_alpha: 8, use_dora: true },
      5,
    );
    await mergeIntoModel(base, [{ adapter: dora }], join(dir, 'm1'));
    const m = dora.modules.get('a.q')!;
    const V = refDelta(W1, m.A, m.B, 2, false);
    const mag = toFloat64Array(m.magnitude!);
    for (let o = 0; o < 64; o++) {
      let ss = 0;
      for (let i = 0; i < 96; i++) ss += V[o * 96 + i] ** 2;
      for (let i = 0; i < 96; i++) V[o * 96 + i] *= mag[o] / Math.sqrt(ss);
    }
    expectClose(
      (await readSafetensors(join(dir, 'm1', 'model.safetensors'))).tensors.get('a.q.weight')!,
      V,
    );
    await unmergeModel(join(dir, 'm1'), [{ adapter: dora }], join(dir, 'r1'));
    await sameFolder(base, join(dir, 'r1'));

    const f = join(dir, 'conv.safetensors');
    await writeSafetensors(f, new Map([['c.attn.weight', W2]]));
    const dora2 = syntheticAdapter(
      { 'c.attn': { in: 96, out: 48, dora: true } },
      { r: 4, lora_alpha: 4, use_dora: true, fan_in_fan_out: true },
      6,
    );
    await mergeIntoModel(f, [{ adapter: dora2 }], join(dir, 'm2.safetensors'));
    const m2 = dora2.modules.get('c.attn')!;
    const V2 = refDelta(W2, m2.A, m2.B, 1, true); // [in=96, out=48]
    const mag2 = toFloat64Array(m2.magnitude!);
    for (let o = 0; o < 48; o++) {
      let ss = 0;
      for (let i = 0; i < 96; i++) ss += V2[i * 48 + o] ** 2;
      for (let i = 0; i < 96; i++) V2[i * 48 + o] *= mag2[o] / Math.sqrt(ss);
    }
    expectClose(
      (await readSafetensors(join(dir, 'm2.safetensors'))).tensors.get('c.attn.weight')!,
      V2,
    );
  });

  it('lora_bias adds s · bias to the base bias; embedding LoRA adds s · (B·A)^T; saved modules replace', async () => {
    const dir = await tmp();
    const W = randomTensor(51, [32, 40]);
    const bias = randomTensor(52, [32]);
    const E = randomTensor(53, [100, 24]); // embedding [vocab, dim]
    const head = randomTensor(54, [3, 24]);
    const base = join(dir, 'base');
    await writeModel(
      base,
      new Map([
        ['l.fc.weight', W],
        ['l.fc.bias', bias],
        ['embed.weight', E],
        ['score.weight', head],
      ]),
    );
    const a = syntheticAdapter(
      { 'l.fc': { in: 40, out: 32, bias: true }, embed: { in: 100, out: 24, embedding: true } },
      { r: 2, lora_alpha: 6, lora_bias: true },
      8,
    );
    const newHead = randomTensor(55, [3, 24]);
    const withHead: Adapter = { ...a, modulesToSave: new Map([['score.weight', newHead]]) };
    const report = await mergeIntoModel(base, [{ adapter: withHead, weight: 2 }], join(dir, 'm'));
    expect(report.replaced).toEqual(['score.weight']);
    expect(report.biases).toEqual(['l.fc.bias']);
    const t = (await readSafetensors(join(dir, 'm', 'model.safetensors'))).tensors;
    const s = 2 * (6 / 2);
    const fc = a.modules.get('l.fc')!;
    expectClose(t.get('l.fc.weight')!, refDelta(W, fc.A, fc.B, s, false));
    const b0 = toFloat64Array(bias);
    const lb = toFloat64Array(fc.bias!);
    expectClose(
      t.get('l.fc.bias')!,
      b0.map((v, i) => v + s * lb[i]),
    );
    const em = a.modules.get('embed')!;
    expectClose(t.get('embed.weight')!, refDelta(E, em.A, em.B, s, true));
    expect(t.get('score.weight')!.data).toEqual(newHead.data);
    await unmergeModel(join(dir, 'm'), [{ adapter: withHead }], join(dir, 'r'));
    await sameFolder(base, join(dir, 'r'));
  });
});
