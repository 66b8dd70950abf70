import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

/**
 * The bundled tiny model: `models/tiny` inside the installed @lora/cli package, or at the top of
 * this repository when running from a checkout. It is the default of every command that takes a
 * model, so the README's examples run with nothing downloaded.
 */
export function bundledModelDir(): string {
  const candidates = [
    new URL('../models/tiny', import.meta.url), // installed package: dist/ beside models/
    new URL('../../../models/tiny', import.meta.url), // repository: apps/cli/{src,dist}/
  ].map((u) => fileURLToPath(u));
  const found = candidates.find((dir) => existsSync(dir));
  if (!found) {
    throw new Error(
      `The bundled model is missing (looked in ${candidates.join(' and ')}). Reinstall @lora/cli or pass --model <dir>.`,
    );
  }
  return found;
}
