import { LoraError } from '@lora/core';

/**
 * The error type of `@lora/serve`. `status` is the HTTP status the server answers with; codes
 * are stable, e.g. `ADAPTER_NOT_FOUND`, `ADAPTER_NAME_INVALID`, `LIMIT_MAX_TOKENS`,
 * `LIMIT_PROMPT_TOKENS`, `QUEUE_FULL`, `TOO_MANY_REQUESTS`, `SHUTTING_DOWN`.
 */
export class ServeError extends LoraError {
  readonly status: number;

  constructor(
    status: number,
    code: string,
    message: string,
    details: Record<string, unknown> = {},
    options?: ErrorOptions,
  ) {
    super(code, message, details, options);
    this.status = status;
  }
}
