// The table of the README: on each held-out task of the bundled model, exact-match accuracy of the
// base, LoRA r=8 on q,v, LoRA r=8 on all linear layers, QLoRA (NF4 + double quant) r=8 all-linear
// and full fine-tuning, with trainable parameters, peak RSS, tokens/s and wall time, over several
// seeds (mean and spread). Same data and step budget for every method; every run is a real
// `lora train` / `lora eval` command (printed). Writes models/tiny/TABLE.md and table.json.
// Usage: node scripts/pretrain/table.mjs [--steps 150] [--seeds 0,1] [--tasks shift,double]
import { spawnSync } from 'node:child_process';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('../..', import.meta.url));
const { values } = parseArgs({
  options: {
    steps: { type: 'string', default: '150' },
    seeds: { type: 'string', default: '0,1' },
    tasks: { type: 'string', default: 'shift,double' },
    work: { type: 'string', default: join(root, '.table') },
  },
});
const model = join(root, 'models/tiny');
const lora = join(root, 'apps/cli/bin/lora.js');
const seeds = values.seeds.split(',').map(Number);

function run(args) {
  console.error(`$ lora ${args.join(' ')}`);
  const r = spawnSync(process.execPath, [lora, ...args], {
    encoding: 'utf8',
    maxBuffer: 1 << 28,
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  if (r.status !== 0) throw new Error(`lora ${args[0]} failed (exit ${r.status})`);
  return JSON.parse(r.stdout);
}

const METHODS = [
  {
    name: 'LoRA r=8 q,v',
    args: ['--method', 'lora', '--targets', 'q_proj,v_proj', '--lr', '3e-3'],
  },
  {
    name: 'LoRA r=8 all-linear',
    args: ['--method', 'lora', '--targets', 'all-linear', '--lr', '3e-3'],
  },
  {
    name: 'QLoRA nf4+DQ r=8 all-linear',
    args: [
      '--method',
      'qlora',
      '--quant',
      'nf4',
      '--double-quant',
      '--targets',
      'all-linear',
      '--lr',
      '3e-3',
    ],
    // evaluated on the same 4-bit base it trained on (NF4 + double quant, written by lora quantize)
    evalBase: 'nf4',
  },
  { name: 'full fine-tuning', args: ['--method', 'full', '--lr', '3e-4'], full: true },
];

rmSync(values.work, { recursive: true, force: true });
mkdirSync(values.work, { recursive: true });
const results = [];
const nf4 = join(values.work, 'tiny-nf4');
run(['quantize', model, '-o', nf4, '--format', 'nf4', '--double-quant', '--json']);
const totalParams = run(['inspect', model, '--json']).params;
for (const task of values.tasks.split(',')) {
  const train = join(model, 'tasks', task, 'train.jsonl');
  const evalData = join(model, 'tasks', task, 'eval.jsonl');
  const base = run(['eval', '--model', model, '--data', evalData, '--json']);
  results.push({ task, method: 'base', accuracy: [base.exactMatch.accuracy] });
  for (const m of METHODS) {
    const row = {
      task,
      method: m.name,
      accuracy: [],
      params: 0,
      peakRss: [],
      tokensPerS: [],
      seconds: [],
    };
    for (const seed of seeds) {
      const out = join(values.work, `${task}-${m.name.replace(/\W+/g, '-')}-${seed}`);
      const started = Date.now();
      const report = run([
        'train',
        '--model',
        model,
        '--data',
        train,
        '--rank',
        '8',
        '--alpha',
        '16',
        '--dropout',
        '0',
        '--batch-size',
        '16',
        '--steps',
        values.steps,
        '--schedule',
        'cosine',
        '--warmup-steps',
        '10',
        '--seed',
        String(seed),
        ...m.args,
        '--json',
        '-o',
        out,
      ]);
      row.seconds.push((Date.now() - started) / 1000);
      const evalArgs = m.full
        ? ['--model', out]
        : ['--model', m.evalBase ? nf4 : model, '--adapter', out];
      const ev = run(['eval', ...evalArgs, '--data', evalData, '--json']);
      row.accuracy.push(ev.exactMatch.accuracy);
      row.params = report.trainableParameters;
      row.peakRss.push(report.peakRssBytes);
      const steps = report.steps;
      row.tokensPerS.push(
        steps.reduce((n, s) => n + s.tokens, 0) /
          steps.reduce((t, s) => t + s.tokens / s.tokens_per_s, 0),
      );
    }
    results.push(row);
  }
}

const mean = (xs) => xs.reduce((a, b) => a + b, 0) / xs.length;
const spread = (xs) => (xs.length > 1 ? (Math.max(...xs) - Math.min(...xs)) / 2 : 0);
const lines = [
  '| task | method | exact match (mean ± half-range) | trainable params | peak RSS | tokens/s | wall time |',
  '|---|---|---|---|---|---|---|',
];
for (const r of results) {
  const acc = `${(100 * mean(r.accuracy)).toFixed(1)} % ± ${(100 * spread(r.accuracy)).toFixed(1)}`;
  if (r.method === 'base') {
    lines.push(`| ${r.task} | base | ${(100 * r.accuracy[0]).toFixed(1)} % | 0 | | | |`);
    continue;
  }
  lines.push(
    `| ${r.task} | ${r.method} | ${acc} | ${r.params.toLocaleString('en-US')} (${((100 * r.params) / totalParams).toFixed(2)} %) | ${(mean(r.peakRss) / 2 ** 20).toFixed(0)} MiB | ${mean(r.tokensPerS).toFixed(0)} | ${mean(r.seconds).toFixed(0)} s |`,
  );
}
const command = `node scripts/pretrain/table.mjs --steps ${values.steps} --seeds ${values.seeds} --tasks ${values.tasks}`;
const text = `${lines.join('\n')}\n\n${seeds.length} seeds, ${values.steps} optimizer steps of 16 examples each per run; made by \`${command}\`.\n`;
writeFileSync(join(model, 'TABLE.md'), text);
writeFileSync(join(model, 'table.json'), `${JSON.stringify({ command, results }, null, 2)}\n`);
console.log(text);
