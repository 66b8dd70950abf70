import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { AdapterError } from '../errors.js';

/** File names of a PEFT adapter folder. */
export const ADAPTER_CONFIG_FILE = 'adapter_config.json';
export const ADAPTER_WEIGHTS_FILE = 'adapter_model.safetensors';

async function isFile(path: string): Promise<boolean> {
  return stat(path).then(
    (s) => s.isFile(),
    () => false,
  );
}

/**
 * The config and weights paths of an adapter folder, with errors that say what is there
 * instead (a pickled `adapter_model.bin`, a sub-folder per adapter name, nothing at all).
 */
export async function adapterFiles(
  dir: string,
): Promise<{ configPath: string; weightsPath: string }> {
  const configPath = join(dir, ADAPTER_CONFIG_FILE);
  const weightsPath = join(dir, ADAPTER_WEIGHTS_FILE);
  const dirStat = await stat(dir).catch(() => undefined);
  if (!dirStat)
    throw new AdapterError('ADAPTER_NOT_FOUND', `${dir}: no such adapter folder.`, { path: dir });
  if (!dirStat.isDirectory()) {
    throw new AdapterError(
      'ADAPTER_NOT_FOUND',
      `${dir}: an adapter is a folder holding ${ADAPTER_CONFIG_FILE} and ${ADAPTER_WEIGHTS_FILE}; this is a file.`,
      {
        path: dir,
      },
    );
  }
  if (!(await isFile(configPath))) {
    const subs = [];
    for (const e of await readdir(dir, { withFileTypes: true })) {
      if (e.isDirectory() && (await isFile(join(dir, e.name, ADAPTER_CONFIG_FILE))))
        subs.push(e.name);
    }
    const hint =
      subs.length > 0
        ? ` It has adapter sub-folder(s) ${subs.map((s) => `"${s}"`).join(', ')} (PEFT saves non-default adapters under their name): pass ${join(dir, subs[0])}.`
        : '';
    throw new AdapterError(
      'ADAPTER_CONFIG_MISSING',
      `${dir}: no ${ADAPTER_CONFIG_FILE}, so this is not a PEFT adapter folder.${hint}`,
      { path: dir },
    );
  }
  if (!(await isFile(weightsPath))) {
    const bin = (await isFile(join(dir, 'adapter_model.bin')))
      ? ' It has adapter_model.bin (a pickle), which is not read for safety: convert it to safetensors with PEFT (`model.save_pretrained(dir, safe_serialization=True)`).'
      : '';
    throw new AdapterError('ADAPTER_WEIGHTS_MISSING', `${dir}: no ${ADAPTER_WEIGHTS_FILE}.${bin}`, {
      path: dir,
    });
  }
  return { configPath, weightsPath };
}
