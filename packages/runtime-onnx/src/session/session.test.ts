import { f32 } from '@lora/core';
import type { InferenceSession } from 'onnxruntime-node';
import { describe, expect, it } from 'vitest';
import { GraphBuilder } from '../graph/builder.js';
import * as op from '../graph/ops.js';
import { parseDevice } from './device.js';
import { ModelSession, ortSessionFactory, type SessionFactory } from './session.js';

function tinyGraph() {
  const g = new GraphBuilder('tiny');
  g.output(op.mul(g, g.input('x', 'f32', [2]), g.scalar(3)), 'y');
  return g.build();
}

/**
 * onnxruntime-node with a scripted backend list and scripted CUDA failures; CPU sessions are real.
 * Records the execution providers of every create() call.
 */
function fakeOrt(backends: string[], cudaError?: string) {
  const calls: unknown[] = [];
  const factory: SessionFactory = {
    listSupportedBackends: () => backends.map((name) => ({ name, bundled: true })),
    async create(model, options: InferenceSession.SessionOptions) {
      calls.push(options.executionProviders);
      const wantsCuda = JSON.stringify(options.executionProviders).includes('cuda');
      if (wantsCuda && cudaError) throw new Error(cudaError);
      return ortSessionFactory.create(model, { ...options, executionProviders: ['cpu'] });
    },
  };
  return { factory, calls };
}

const CUDA_LOAD_ERROR =
  'Failed to load shared library: libonnxruntime_providers_cuda.so: libcublasLt.so.12: cannot open shared object file';

describe('execution provider choice', () => {
  it('this build lists the CPU backend', () => {
    expect(ortSessionFactory.listSupportedBackends().map((b) => b.name)).toContain('cpu');
  });

  it('cpu runs on CPU only', async () => {
    const { factory, calls } = fakeOrt(['cpu', 'cuda']);
    const s = await ModelSession.fromGraph(tinyGraph(), { device: 'cpu', factory });
    expect(s.device).toBe('cpu');
    expect(calls).toEqual([['cpu']]);
    expect(Array.from((await s.run({ x: f32([2], [1, 2]) })).y.data as Float32Array)).toEqual([
      3, 6,
    ]);
    await s.release();
  });

  it('cuda on a build without the CUDA provider: one sentence with the install fix, no session attempted', async () => {
    const { factory, calls } = fakeOrt(['cpu']);
    const err = await ModelSession.fromGraph(tinyGraph(), { device: 'cuda', factory }).catch(
      (e) => e,
    );
    expect(err).toMatchObject({ code: 'DEVICE_UNAVAILABLE' });
    expect(err.message).toMatch(
      /no CUDA provider: .*ONNXRUNTIME_NODE_INSTALL=cuda12.*or use --device cpu\.$/,
    );
    expect(calls).toEqual([]);
  });

  it('cuda listed but broken (missing library): named in the error, no silent CPU fallback', async () => {
    const { factory, calls } = fakeOrt(['cpu', 'cuda'], CUDA_LOAD_ERROR);
    const err = await ModelSession.fromGraph(tinyGraph(), {
      device: 'cuda',
      factory,
      deviceId: 1,
    }).catch((e) => e);
    expect(err).toMatchObject({ code: 'DEVICE_UNAVAILABLE' });
    expect(err.message).toMatch(
      /could not be loaded \(libcublasLt.so.12\).*ONNXRUNTIME_NODE_INSTALL=cuda12/,
    );
    expect(calls).toEqual([[{ name: 'cuda', deviceId: 1 }]]);
  });

  it('auto falls back to CPU when CUDA fails, and says so', async () => {
    const { factory, calls } = fakeOrt(['cpu', 'cuda'], CUDA_LOAD_ERROR);
    const warnings: string[] = [];
    const s = await ModelSession.fromGraph(tinyGraph(), {
      device: 'auto',
      factory,
      warn: (m) => warnings.push(m),
    });
    expect(s.device).toBe('cpu');
    expect(calls).toEqual([[{ name: 'cuda', deviceId: 0 }], ['cpu']]);
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatch(/libcublasLt.so.12.*Falling back to CPU\.$/);
    await s.release();
  });

  it('auto uses CUDA when it starts, and goes straight to CPU when the build has none', async () => {
    const withCuda = fakeOrt(['cpu', 'cuda']);
    const s = await ModelSession.fromGraph(tinyGraph(), {
      device: 'auto',
      factory: withCuda.factory,
    });
    expect(s.device).toBe('cuda');
    await s.release();
    const without = fakeOrt(['cpu']);
    const warnings: string[] = [];
    const c = await ModelSession.fromGraph(tinyGraph(), {
      device: 'auto',
      factory: without.factory,
      warn: (m) => warnings.push(m),
    });
    expect(c.device).toBe('cpu');
    expect(without.calls).toEqual([['cpu']]);
    expect(warnings).toEqual([]);
    await c.release();
  });

  it('unknown device names are rejected', () => {
    expect(() => parseDevice('gpu')).toThrow(/Unknown device "gpu": use cpu, cuda or auto/);
  });
});
