import { existsSync } from 'node:fs';
import { bundledModelDir } from './bundled-model.js';
import { UsageError } from './errors.js';
import { cachedModel, hubCacheDir, isHubRepoId } from './hub/cache.js';
import type { CommonOptions } from './output.js';
import { log } from './output.js';
import { startProgress } from './progress.js';

/** A hub name with an optional revision: `org/name` or `org/name@revision`. */
function parseHubName(value: string): { repoId: string; revision?: string } | undefined {
  const at = value.indexOf('@');
  const repoId = at < 0 ? value : value.slice(0, at);
  const revision = at < 0 ? undefined : value.slice(at + 1);
  if (!isHubRepoId(repoId) || revision === '') return undefined;
  return { repoId, revision };
}

/**
 * What a `--model` / `--base` argument names, as a local folder: an existing path always wins;
 * else a Hugging Face hub name (`org/name`, optionally `org/name@revision` or `--revision`) is
 * read from the local hub cache exactly as Python's `huggingface_hub` writes it, and downloaded
 * into that cache (progress bar, resumable, `HF_TOKEN`, `HF_ENDPOINT`) when it is not there.
 * `HF_HUB_OFFLINE=1` forbids the download.
 */
/** A model argument resolved by {@link resolveModelPath}, or the bundled tiny model when absent. */
export async function resolveModelOrBundled(
  value: string | undefined,
  options: CommonOptions & { revision?: string } = {},
): Promise<string> {
  return value === undefined ? bundledModelDir() : resolveModelPath(value, options);
}

export async function resolveModelPath(
  value: string,
  options: CommonOptions & { revision?: string } = {},
): Promise<string> {
  if (existsSync(value)) return value;
  const hub = parseHubName(value);
  if (!hub) return value; // not a hub name: the command reports the missing path itself
  const revision = options.revision ?? hub.revision ?? 'main';
  const cacheDir = hubCacheDir();
  const cached = cachedModel(hub.repoId, revision, cacheDir);
  if (cached) return cached;
  const offline = ['1', 'true', 'yes', 'on'].includes(
    (process.env.HF_HUB_OFFLINE ?? '').toLowerCase(),
  );
  if (offline) {
    throw new UsageError(
      `${value} is neither a local folder nor complete in the Hugging Face cache (${cacheDir}), and HF_HUB_OFFLINE forbids downloading it. Unset HF_HUB_OFFLINE, or give a folder path.`,
    );
  }
  const { downloadModel } = await import('./hub/download.js');
  log(options, `${hub.repoId}: not in ${cacheDir}, downloading (revision ${revision})`);
  const progress = startProgress(options, `downloading ${hub.repoId} (MiB)`);
  try {
    return await downloadModel(hub.repoId, {
      revision,
      cacheDir,
      onProgress: (done, total, file) =>
        progress.update(Math.round(done / 2 ** 20), Math.round(total / 2 ** 20), file),
    });
  } finally {
    progress.stop();
  }
}
