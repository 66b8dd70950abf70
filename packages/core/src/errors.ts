/**
 * Every package throws one error type, each a subclass of {@link LoraError}, with a stable
 * machine-readable `code` and a message that says what was wrong, where, and what to do.
 */
export class LoraError extends Error {
  /** Stable identifier, e.g. `SAFETENSORS_TRUNCATED`. Safe to match on. */
  readonly code: string;
  /** Extra structured facts (file, tensor, module, index) for tools. */
  readonly details: Readonly<Record<string, unknown>>;

  constructor(
    code: string,
    message: string,
    details: Record<string, unknown> = {},
    options?: ErrorOptions,
  ) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
    this.details = details;
  }
}

/** The error type of `@lora/core`. */
export class CoreError extends LoraError {}

/** True for any error raised by a `@lora/*` package. */
export function isLoraError(error: unknown): error is LoraError {
  return error instanceof LoraError;
}
