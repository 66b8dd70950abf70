/** Bad usage of the command line (exit code 2): a wrong flag value, a missing argument. */
export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}
