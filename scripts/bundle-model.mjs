// Copies the bundled model (models/tiny) into apps/cli/models/tiny before `pnpm pack` of @lora/cli
// (its prepack script), so the published package ships the model every command defaults to;
// `--clean` removes the copy again (postpack). The repository keeps one copy, at models/tiny.
import { cpSync, rmSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const source = fileURLToPath(new URL('../models/tiny', import.meta.url));
const target = fileURLToPath(new URL('../apps/cli/models', import.meta.url));
rmSync(target, { recursive: true, force: true });
if (!process.argv.includes('--clean')) cpSync(source, `${target}/tiny`, { recursive: true });
