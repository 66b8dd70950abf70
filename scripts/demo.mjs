// The README's first command: the main job, end to end, on a tiny model made on the spot.
// Every step is a real `lora` command, printed before it runs, so you can copy it.
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const lora = join(root, 'apps/cli/bin/lora.js');
const work = join(root, '.demo');
const model = join(work, 'tiny-llama');
const adapter = join(work, 'tiny-adapter');

function step(title) {
  console.log(`\n== ${title}`);
}

function run(args, { show = true } = {}) {
  const quoted = args.map((a) => (/\s/.test(a) ? JSON.stringify(a) : a));
  if (show) console.log(`$ lora ${quoted.join(' ')}`);
  const r = spawnSync(process.execPath, [lora, ...args], { stdio: 'inherit', cwd: root });
  if (r.status !== 0) {
    console.error(`demo: "lora ${args[0]}" failed with exit code ${r.status}`);
    process.exit(r.status ?? 1);
  }
}

rmSync(work, { recursive: true, force: true });
step('A tiny LLaMA model and a LoRA adapter for it (seeded random weights; byte-level vocabulary)');
const made = spawnSync(
  process.execPath,
  [join(root, 'scripts/make-tiny-llama.mjs'), model, adapter],
  { stdio: 'inherit' },
);
if (made.status !== 0) process.exit(1);
run(['inspect', '.demo/tiny-llama']);
run(['inspect', '.demo/tiny-adapter']);

step('How much memory would QLoRA need for a 65B model? (the QLoRA paper: fits in 48 GB)');
run([
  'plan',
  '--params',
  '65e9',
  '--quant',
  'nf4',
  '--double-quant',
  '--rank',
  '64',
  '--targets',
  'all-linear',
]);

step('Quantize the base to 4 bits: NF4 with double quantization, bitsandbytes layout');
run([
  'quantize',
  '.demo/tiny-llama',
  '-o',
  '.demo/tiny-llama-nf4',
  '--format',
  'nf4',
  '--double-quant',
]);

step(
  'Generate with the f32 base, the 4-bit base, and with the adapter (random weights: the text is noise)',
);
const gen = ['--prompt', 'Hello', '--max-tokens', '24', '--temperature', '0'];
run(['generate', '--model', '.demo/tiny-llama', ...gen]);
run(['generate', '--model', '.demo/tiny-llama-nf4', ...gen]);
run(['generate', '--model', '.demo/tiny-llama', '--adapter', '.demo/tiny-adapter', ...gen]);

step('Merge the adapter into the base, then unmerge it: the original bytes come back');
run([
  'merge',
  '--base',
  '.demo/tiny-llama',
  '--adapter',
  '.demo/tiny-adapter',
  '-o',
  '.demo/merged',
]);
run([
  'unmerge',
  '--merged',
  '.demo/merged',
  '--adapter',
  '.demo/tiny-adapter',
  '-o',
  '.demo/unmerged',
]);
const same = readFileSync(join(model, 'model.safetensors')).equals(
  readFileSync(join(work, 'unmerged/model.safetensors')),
);
console.log(
  same ? 'unmerged model.safetensors is byte-identical to the original' : 'MISMATCH after unmerge',
);
if (!same) process.exit(1);

const stories = join(root, '../shared/fixtures/llama2c-stories260k');
if (existsSync(stories)) {
  step('A real pretrained model (stories260K, found beside the checkout)');
  run([
    'generate',
    '--model',
    stories,
    '--prompt',
    'Once upon a time',
    '--max-tokens',
    '64',
    '--temperature',
    '0',
  ]);
}
console.log(
  '\nDone. Everything above ran on this machine with nothing downloaded; outputs are in .demo/.',
);
