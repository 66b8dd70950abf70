import { isLoraError } from '@lora/core';

/** True when `e` is a @lora error with this code (prints the error otherwise, to help). */
export function isLoraErrorWithCode(e: unknown, code: string): boolean {
  if (isLoraError(e) && e.code === code) return true;
  console.error('expected error code', code, 'got', e);
  return false;
}
