import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import {
  type RngState,
  readJsonFile,
  SafetensorsFile,
  type TensorToWrite,
  writeBytesAtomic,
  writeFolderAtomic,
  writeSafetensors,
} from '@lora/core';
import { TrainError } from '../errors.js';
import type { AdamWState } from '../optim/adamw.js';
import type { Parameter } from '../optim/parameters.js';
import type { EvalReport, StepReport } from './report.js';

const STATE_FILE = 'trainer_state.json';
const TENSORS_FILE = 'checkpoint.safetensors';

/** Everything needed to continue a run exactly where it stopped. */
export interface CheckpointState {
  /** Optimizer steps completed. */
  readonly step: number;
  /** Values of the trainable parameters after `step` steps (by name). */
  readonly parameters: ReadonlyMap<string, Float32Array>;
  readonly optimizer: AdamWState;
  /** The dropout generator's state (the data order is a pure function of seed and step). */
  readonly dropoutRng: RngState;
  /** The reports of the steps done so far (so a resumed run reports the whole run). */
  readonly history: readonly StepReport[];
  /** The evaluations done so far. */
  readonly evals: readonly EvalReport[];
  /** The settings that decide the numbers; a resume with other settings is refused. */
  readonly fingerprint: Record<string, unknown>;
}

/**
 * Writes a checkpoint folder atomically (replacing the previous one only once the new one is
 * complete, so a kill at any moment leaves one whole checkpoint): `trainer_state.json` (step, RNG
 * state, history, settings) and `checkpoint.safetensors` (parameters, `exp_avg`, `exp_avg_sq`,
 * float32).
 */
export async function saveCheckpoint(
  dir: string,
  state: CheckpointState,
  parameters: readonly Parameter[],
): Promise<void> {
  const tensors: TensorToWrite[] = [];
  parameters.forEach((p, i) => {
    const data = state.parameters.get(p.name);
    if (!data) throw new TrainError('INTERNAL', `checkpoint: no values for ${p.name}.`);
    tensors.push({ name: `param/${p.name}`, dtype: 'f32', shape: p.shape, data });
    tensors.push({
      name: `exp_avg/${p.name}`,
      dtype: 'f32',
      shape: p.shape,
      data: state.optimizer.expAvg[i],
    });
    tensors.push({
      name: `exp_avg_sq/${p.name}`,
      dtype: 'f32',
      shape: p.shape,
      data: state.optimizer.expAvgSq[i],
    });
  });
  const json = {
    format: 'lora-train-checkpoint',
    version: 1,
    step: state.step,
    optimizer_step: state.optimizer.step,
    dropout_rng: state.dropoutRng,
    history: state.history,
    evals: state.evals,
    fingerprint: state.fingerprint,
    parameters: parameters.map((p) => p.name),
  };
  await writeFolderAtomic(
    dir,
    async (tmp) => {
      await writeSafetensors(join(tmp, TENSORS_FILE), tensors);
      await writeBytesAtomic(join(tmp, STATE_FILE), `${JSON.stringify(json)}\n`);
    },
    { overwrite: true },
  );
}

/**
 * Reads a checkpoint written by {@link saveCheckpoint} for a run with these parameters and
 * settings; anything that does not match (names, shapes, settings) is `CHECKPOINT_INVALID` with
 * what differs.
 */
export async function loadCheckpoint(
  dir: string,
  parameters: readonly Parameter[],
  fingerprint: Record<string, unknown>,
): Promise<CheckpointState> {
  let json: Record<string, unknown>;
  try {
    json = (await readJsonFile(join(dir, STATE_FILE))) as Record<string, unknown>;
  } catch (e) {
    throw new TrainError(
      'CHECKPOINT_INVALID',
      `${dir}: no readable ${STATE_FILE} (${(e as Error).message}). --resume needs the checkpoint folder a run with --checkpoint-every wrote.`,
      { path: dir },
      { cause: e },
    );
  }
  if (json.format !== 'lora-train-checkpoint') {
    throw new TrainError(
      'CHECKPOINT_INVALID',
      `${dir}: ${STATE_FILE} is not a lora training checkpoint.`,
      { path: dir },
    );
  }
  const saved = json.fingerprint as Record<string, unknown>;
  for (const key of new Set([...Object.keys(saved), ...Object.keys(fingerprint)])) {
    if (JSON.stringify(saved[key]) !== JSON.stringify(fingerprint[key])) {
      throw new TrainError(
        'CHECKPOINT_MISMATCH',
        `${dir}: the checkpoint was made with ${key} = ${JSON.stringify(saved[key])}, this run has ${JSON.stringify(fingerprint[key])}. Resume with the same settings.`,
        { path: dir, setting: key },
      );
    }
  }
  const file = await SafetensorsFile.open(join(dir, TENSORS_FILE));
  try {
    const values = new Map<string, Float32Array>();
    const expAvg: Float32Array[] = [];
    const expAvgSq: Float32Array[] = [];
    for (const p of parameters) {
      const read = async (prefix: string): Promise<Float32Array> => {
        const name = `${prefix}/${p.name}`;
        const info = file.names().includes(name) ? await file.read(name) : undefined;
        if (info?.dtype !== 'f32' || info.data.length !== p.data.length) {
          throw new TrainError(
            'CHECKPOINT_INVALID',
            `${dir}: ${name} is missing or has the wrong size.`,
            {
              path: dir,
              tensor: name,
            },
          );
        }
        return info.data as Float32Array;
      };
      values.set(p.name, await read('param'));
      expAvg.push(await read('exp_avg'));
      expAvgSq.push(await read('exp_avg_sq'));
    }
    return {
      step: json.step as number,
      parameters: values,
      optimizer: { step: json.optimizer_step as number, expAvg, expAvgSq },
      dropoutRng: json.dropout_rng as RngState,
      history: json.history as StepReport[],
      evals: (json.evals as EvalReport[] | undefined) ?? [],
      fingerprint: saved,
    };
  } finally {
    await file.close();
  }
}

/** Removes a checkpoint folder (after the final output is written). */
export async function removeCheckpoint(dir: string): Promise<void> {
  await rm(dir, { recursive: true, force: true });
}
