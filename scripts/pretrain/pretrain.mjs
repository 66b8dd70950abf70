// Pretrains the bundled tiny model (models/tiny) from scratch with `lora train --method full`, and
// writes its held-out task datasets. Reproducible: the seeds, the data generator (tasks.mjs), the
// hyperparameters and the exact commands are all here; the run's figures go to
// models/tiny/PRETRAINING.md. Not part of CI (it takes tens of minutes on 2 cores).
// Usage: node scripts/pretrain/pretrain.mjs [--steps N] [--out models/tiny]
import { spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';
import { createRng } from '../../packages/core/dist/index.js';
import { writeInitialModel } from './model-init.mjs';
import { example, HELD_OUT_TASKS, PRETRAIN_TASKS, pretrainingText } from './tasks.mjs';

const root = fileURLToPath(new URL('../..', import.meta.url));
const { values } = parseArgs({
  options: {
    steps: { type: 'string', default: '1500' },
    out: { type: 'string', default: join(root, 'models/tiny') },
    work: { type: 'string', default: join(root, '.pretrain') },
    resume: { type: 'boolean', default: false },
  },
});
const SEED = 2026;
const STEPS = Number(values.steps);
const out = values.out;
const work = values.work;

const writeJsonl = (path, rows) =>
  writeFileSync(path, rows.map((r) => `${JSON.stringify(r)}\n`).join(''));

// --resume continues an interrupted run from its last checkpoint (same data, same init).
if (!values.resume) rmSync(work, { recursive: true, force: true });
mkdirSync(work, { recursive: true });

// 1. data: pretraining text (packed), a pretraining eval set, held-out task sets
const rng = createRng(SEED);
const lines = pretrainingText(rng, 200_000);
const chunk = 16; // lines per text row; --packing joins rows into full sequences
const textRows = [];
for (let i = 0; i < lines.length; i += chunk)
  textRows.push({ text: lines.slice(i, i + chunk).join('') });
writeJsonl(join(work, 'pretrain.jsonl'), textRows);
const evalRng = createRng(SEED + 1);
const pretrainEval = [];
for (const [name, gen] of Object.entries(PRETRAIN_TASKS)) {
  for (let i = 0; i < 32; i++) pretrainEval.push(example(name, gen, evalRng));
}
writeJsonl(join(work, 'pretrain-eval.jsonl'), pretrainEval);

// 2. the initial model
const init = join(work, 'init');
const params = await writeInitialModel(init, SEED);

// 3. pretraining
const lora = join(root, 'apps/cli/bin/lora.js');
const trainArgs = [
  'train',
  '--method',
  'full',
  '--model',
  init,
  '--data',
  join(work, 'pretrain.jsonl'),
  '--packing',
  '--seq-len',
  '128',
  '--batch-size',
  '16',
  '--steps',
  String(STEPS),
  '--lr',
  '2e-3',
  '--weight-decay',
  '0.01',
  '--schedule',
  'cosine',
  '--warmup-steps',
  '100',
  '--max-grad-norm',
  '1.0',
  '--seed',
  String(SEED),
  '--checkpoint-every',
  '100',
  '--json',
  '-o',
  join(work, 'trained'),
];
if (values.resume) trainArgs.push('--resume');
const started = Date.now();
const trained = spawnSync(process.execPath, [lora, ...trainArgs], {
  encoding: 'utf8',
  maxBuffer: 1 << 28,
  stdio: ['ignore', 'pipe', 'inherit'],
});
const seconds = (Date.now() - started) / 1000;
if (trained.status !== 0) {
  console.error(`pretraining failed (exit ${trained.status})`);
  process.exit(1);
}
const report = JSON.parse(trained.stdout);

// 4. evaluation of the trained model on the pretraining tasks and the held-out tasks
function evaluate(model, data) {
  const r = spawnSync(
    process.execPath,
    [lora, 'eval', '--model', model, '--data', data, '--json'],
    {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'inherit'],
    },
  );
  if (r.status !== 0) throw new Error(`lora eval failed on ${data}`);
  const report = JSON.parse(r.stdout);
  // paths relative to the repository, so the record does not depend on where it was made
  for (const key of ['model', 'data']) report[key] = relative(root, report[key]);
  return report;
}

rmSync(out, { recursive: true, force: true });
mkdirSync(join(out, 'tasks'), { recursive: true });
for (const f of [
  'config.json',
  'model.safetensors',
  'tokenizer.json',
  'tokenizer_config.json',
  'generation_config.json',
]) {
  writeFileSync(join(out, f), readFileSync(join(work, 'trained', f)));
}
const heldOut = {};
for (const [name, gen] of Object.entries(HELD_OUT_TASKS)) {
  const taskRng = createRng(SEED + 100 + Object.keys(heldOut).length);
  const dir = join(out, 'tasks', name);
  mkdirSync(dir, { recursive: true });
  writeJsonl(
    join(dir, 'train.jsonl'),
    Array.from({ length: 2000 }, () => example(name, gen, taskRng)),
  );
  writeJsonl(
    join(dir, 'eval.jsonl'),
    Array.from({ length: 100 }, () => example(name, gen, taskRng)),
  );
  heldOut[name] = evaluate(out, join(dir, 'eval.jsonl'));
}
mkdirSync(join(out, 'eval'), { recursive: true });
const pretrainEvalFile = join(out, 'eval', 'pretraining-tasks.jsonl');
writeFileSync(pretrainEvalFile, readFileSync(join(work, 'pretrain-eval.jsonl')));
const pretrained = evaluate(out, pretrainEvalFile);
const record = {
  seed: SEED,
  steps: STEPS,
  params,
  seconds,
  command: `lora ${trainArgs.map((a) => relative(root, a) || a).join(' ')}`,
  losses: report.steps.map((s) => s.loss),
  pretrained,
  heldOut,
};
writeFileSync(join(out, 'pretraining.json'), `${JSON.stringify(record, null, 2)}\n`);
console.log(JSON.stringify({ seconds, params, pretrained, heldOut }, null, 2));
