/**
 * Standard output whose reader may go away (`lora generate ... | head -c 10`). Node reports a
 * failed write to a pipe as an 'error' event on `process.stdout` one tick later; with no
 * listener that event is an uncaught exception (a stack trace and exit 1). {@link run} watches
 * stdout for the whole command: when the reader is gone (EPIPE), the command ends quietly with
 * exit 0, as `head` users expect; any other write error ends it with a clear message.
 */

/**
 * Thrown by {@link writeStdout} once stdout can take no more: it unwinds the command (its
 * `finally` blocks remove temporaries and free sessions) and `run` turns it into exit 0, or
 * into the write error's message when the reader did not simply go away.
 */
export class StdoutClosed extends Error {
  constructor() {
    super('standard output is closed');
    this.name = 'StdoutClosed';
  }
}

let closed = false;
let writeError: Error | undefined;

function onError(e: NodeJS.ErrnoException): void {
  closed = true;
  if (e.code !== 'EPIPE') writeError ??= e;
}

/** Whether stdout can take no more (its reader went away, or a write failed). */
export function stdoutClosed(): boolean {
  return closed;
}

/**
 * Writes `text` to stdout; throws {@link StdoutClosed} when an earlier write found stdout
 * closed, so that a command streaming output stops instead of working for nobody.
 */
export function writeStdout(text: string): void {
  if (closed) throw new StdoutClosed();
  process.stdout.write(text);
}

/**
 * Starts watching stdout for one run. `end()` waits until the writes still queued (a pipe
 * takes ~64 KiB at once) have reached the reader or failed, and for their errors (reported a
 * tick later), stops watching, and returns the write error other than EPIPE, if any, as a
 * message for the user.
 */
export function watchStdout(): { end(): Promise<Error | undefined> } {
  closed = false;
  writeError = undefined;
  process.stdout.on('error', onError);
  return {
    async end() {
      await flushed();
      await new Promise((resolve) => setImmediate(resolve));
      process.stdout.off('error', onError);
      const e = writeError;
      return e && new Error(`cannot write to standard output: ${e.message}`, { cause: e });
    },
  };
}

/** Resolves when stdout holds no queued write: all written ('drain'), or failed ('close'). */
function flushed(): Promise<void> {
  const out = process.stdout;
  if (out.writableLength === 0 || out.destroyed) return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      out.off('drain', done);
      out.off('close', done);
      resolve();
    };
    out.on('drain', done);
    out.on('close', done);
  });
}
