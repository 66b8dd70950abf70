import cliProgress from 'cli-progress';
import type { CommonOptions } from './output.js';

/** A progress display for a long command: a bar on a terminal, nothing otherwise. */
export interface Progress {
  /** `done` of `total` items so far (total may be unknown), `item` the one just finished. */
  update(done: number, total: number | undefined, item: string): void;
  stop(): void;
}

/** The stream a bar draws on: stderr, or a stand-in in tests. */
export interface ProgressStream {
  readonly isTTY?: boolean;
  write(chunk: string): unknown;
}

/**
 * A progress bar on stderr (cli-progress), drawn only when stderr is a terminal and the user did
 * not ask for --quiet or --json: piped and scripted runs get clean output.
 */
export function startProgress(
  options: CommonOptions,
  label: string,
  stream: ProgressStream = process.stderr,
): Progress {
  if (!stream.isTTY || options.quiet || options.json) return { update() {}, stop() {} };
  let bar: cliProgress.SingleBar | undefined;
  return {
    update(done, total, item) {
      if (!bar) {
        bar = new cliProgress.SingleBar(
          {
            stream: stream as NodeJS.WritableStream,
            format: total
              ? `${label} [{bar}] {value}/{total} {item}`
              : `${label} {value} done, last: {item}`,
            hideCursor: true,
            clearOnComplete: true,
            barsize: 24,
            noTTYOutput: false,
          },
          cliProgress.Presets.shades_classic,
        );
        bar.start(total ?? 0, 0, { item: '' });
      }
      if (total) bar.setTotal(total);
      bar.update(done, { item });
    },
    stop() {
      bar?.stop();
    },
  };
}
