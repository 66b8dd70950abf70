import { removeTemporariesSync } from '@lora/core';

/** Exit codes of a process ended by a signal, as shells report them (128 + signal number). */
const SIGNAL_EXIT_CODES = { SIGINT: 130, SIGTERM: 143, SIGHUP: 129 } as const;

/**
 * On Ctrl-C (SIGINT), SIGTERM or SIGHUP: removes every temporary file or folder this process
 * created (a half-written output never stays behind; a replaced output is put back), then exits
 * with 128 + the signal number. Installed by the `lora` executable only, not by `run`.
 */
export function installSignalCleanup(): void {
  for (const [signal, code] of Object.entries(SIGNAL_EXIT_CODES)) {
    process.once(signal, () => {
      removeTemporariesSync();
      process.stderr.write(`\nlora: stopped by ${signal}; temporary files removed.\n`);
      process.exit(code);
    });
  }
}
