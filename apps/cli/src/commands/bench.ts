import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { Command } from 'commander';
import { sections } from '../bench/index.js';
import type { BenchReport } from '../bench/types.js';
import { UsageError } from '../errors.js';
import { type CommonOptions, emit, formatBytes, table } from '../output.js';

interface BenchOptions extends CommonOptions {
  quick?: boolean;
  only?: string;
  inProcess?: boolean;
}

const BIN = fileURLToPath(new URL('../../bin/lora.js', import.meta.url));

export function registerBench(program: Command): void {
  program
    .command('bench')
    .description(
      'Measure the performance table: every section runs in its own process, ratios measured in one run, peak memory reported.',
    )
    .option('--quick', 'smaller sizes, fewer repeats (a smoke run)')
    .option(
      '--only <sections>',
      `comma-separated sections: ${sections.map((s) => s.name).join(', ') || '(none yet)'}`,
    )
    .option('--in-process', 'run in this process (used internally for one section)')
    .option('--json', 'print one JSON document')
    .option('--quiet', 'no progress on stderr')
    .action(async (options: BenchOptions) => {
      const wanted = options.only
        ? options.only.split(',').map((s) => s.trim())
        : sections.map((s) => s.name);
      for (const w of wanted) {
        if (!sections.some((s) => s.name === w)) {
          throw new UsageError(
            `unknown bench section "${w}". Sections: ${sections.map((s) => s.name).join(', ')}.`,
          );
        }
      }
      const reports: BenchReport[] = [];
      for (const name of wanted) {
        reports.push(options.inProcess ? await runHere(name, options) : runInChild(name, options));
      }
      emit(options, { sections: reports }, () => reports.map(render).join('\n\n'));
    });
}

async function runHere(name: string, options: BenchOptions): Promise<BenchReport> {
  const section = sections.find((s) => s.name === name)!;
  const t0 = performance.now();
  const result = await section.run({
    quick: Boolean(options.quick),
    log: (m) => {
      if (!options.quiet) process.stderr.write(`[${name}] ${m}\n`);
    },
  });
  return {
    name,
    title: section.title,
    ...result,
    peakRssBytes: process.resourceUsage().maxRSS * 1024,
    seconds: (performance.now() - t0) / 1000,
  };
}

/** A fresh process per section, so each peak RSS belongs to that section alone. */
function runInChild(name: string, options: BenchOptions): BenchReport {
  const args = [BIN, 'bench', '--only', name, '--in-process', '--json'];
  if (options.quick) args.push('--quick');
  if (options.quiet || options.json) args.push('--quiet');
  const child = spawnSync(process.execPath, ['--expose-gc', ...args], {
    stdio: ['ignore', 'pipe', 'inherit'],
    maxBuffer: 64 * 1024 * 1024,
    encoding: 'utf8',
  });
  if (child.status !== 0) throw new Error(`bench section "${name}" failed (exit ${child.status}).`);
  return (JSON.parse(child.stdout) as { sections: BenchReport[] }).sections[0];
}

function render(r: BenchReport): string {
  const lines = [
    `## ${r.title}  (${r.name}; peak RSS ${formatBytes(r.peakRssBytes)}, ${r.seconds.toFixed(1)} s)`,
    table(r.columns, r.rows),
  ];
  for (const n of r.notes ?? []) lines.push(`- ${n}`);
  return lines.join('\n');
}
