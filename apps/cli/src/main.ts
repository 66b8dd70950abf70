import { isLoraError, removeStaleTemporaries } from '@lora/core';
import { Command, CommanderError } from 'commander';
import { commands } from './commands/index.js';
import { UsageError } from './errors.js';
import { releaseOutputs } from './output.js';
import { StdoutClosed, watchStdout } from './stdout.js';
import { VERSION } from './version.js';

export { installSignalCleanup } from './signals.js';

/**
 * Runs the `lora` command line with the given arguments and returns the exit code:
 * 0 success, 1 the operation failed, 2 bad usage or bad input.
 */
export async function run(argv: readonly string[]): Promise<number> {
  const program = new Command('lora')
    .description(
      'LoRA and QLoRA for Node.js: inspect, plan, quantize, merge, generate and serve adapters.',
    )
    .version(VERSION, '-V, --version')
    .showSuggestionAfterError(true)
    .showHelpAfterError('(run with --help for usage)')
    .exitOverride()
    .configureOutput({
      writeOut: (s) => process.stdout.write(s),
      writeErr: (s) => process.stderr.write(s),
    });
  for (const register of commands) register(program);
  for (const command of program.commands) {
    if (!command.options.some((o) => o.long === '--verbose'))
      command.option('--verbose', 'on errors, also print the stack trace');
  }
  const verbose = argv.includes('--verbose');
  // The reader of stdout going away (`| head`) ends the command quietly (see stdout.ts).
  const stdout = watchStdout();
  let code = 0;
  try {
    // Temporaries of earlier runs that were killed (SIGKILL, power loss) are removed first.
    removeStaleTemporaries();
    await program.parseAsync(argv, { from: 'user' });
  } catch (e) {
    // StdoutClosed unwound the command: its own finally blocks removed its temporaries.
    if (!(e instanceof StdoutClosed)) code = reportError(e, verbose);
  } finally {
    releaseOutputs();
  }
  const writeError = await stdout.end();
  return writeError && code === 0 ? reportError(writeError, verbose) : code;
}

function reportError(e: unknown, verbose: boolean): number {
  if (e instanceof CommanderError) {
    // Commander already printed the message; help and version are successes.
    if (
      e.code === 'commander.helpDisplayed' ||
      e.code === 'commander.version' ||
      e.code === 'commander.help'
    )
      return 0;
    return 2;
  }
  if (e instanceof UsageError) {
    process.stderr.write(`lora: ${e.message}\n`);
    if (verbose && e.stack) process.stderr.write(`${e.stack}\n`);
    return 2;
  }
  if (isLoraError(e)) {
    process.stderr.write(`lora: ${e.message}\n`);
    if (verbose && e.stack) process.stderr.write(`${e.stack}\n`);
    return isBadInput(e.code) ? 2 : 1;
  }
  const err = e as Error;
  process.stderr.write(`lora: ${err?.message ?? String(e)}\n`);
  if (verbose && err?.stack) process.stderr.write(`${err.stack}\n`);
  else process.stderr.write('(run again with --verbose for the stack trace)\n');
  return 1;
}

/** Errors about the user's files or arguments (exit 2) rather than a failed operation (exit 1). */
function isBadInput(code: string): boolean {
  return !/WRITE_FAILED|INTERNAL|SESSION_FAILED|RUNTIME_FAILED/.test(code);
}
