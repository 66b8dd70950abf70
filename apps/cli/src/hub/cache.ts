import { existsSync, readFileSync, statSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { parseJsonText } from '@lora/core';

/**
 * The Hugging Face hub cache folder, where Python's `huggingface_hub` keeps models:
 * `HF_HUB_CACHE`, else `HUGGINGFACE_HUB_CACHE` (older name), else `HF_HOME/hub`, else
 * `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`.
 */
export function hubCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.HF_HUB_CACHE) return env.HF_HUB_CACHE;
  if (env.HUGGINGFACE_HUB_CACHE) return env.HUGGINGFACE_HUB_CACHE;
  const home = env.HF_HOME ?? join(env.XDG_CACHE_HOME ?? join(homedir(), '.cache'), 'huggingface');
  return join(home, 'hub');
}

/** A hub repository id such as `org/name` (letters, digits, `-`, `_`, `.`; no `..`). */
export function isHubRepoId(value: string): boolean {
  return /^[A-Za-z0-9][\w.-]*\/[A-Za-z0-9][\w.-]*$/.test(value) && !value.includes('..');
}

/** `models--org--name`: the folder of a model repository inside the cache. */
export function repoCacheFolder(cacheDir: string, repoId: string): string {
  return join(cacheDir, `models--${repoId.split('/').join('--')}`);
}

const COMMIT = /^[0-9a-f]{40}$/;

/**
 * The commit a revision points at in the cache: the revision itself when it is a commit hash,
 * else the content of `refs/<revision>` (Python writes `refs/main` on download).
 */
export function cachedCommit(repoFolder: string, revision: string): string | undefined {
  if (COMMIT.test(revision)) return revision;
  const ref = join(repoFolder, 'refs', revision);
  if (!existsSync(ref)) return undefined;
  const commit = readFileSync(ref, 'utf8').trim();
  return COMMIT.test(commit) ? commit : undefined;
}

/**
 * Whether a snapshot folder holds a whole model: `config.json` and the weights
 * (`model.safetensors`, or the index and every shard it lists).
 */
export function isCompleteModel(dir: string): boolean {
  if (!existsSync(join(dir, 'config.json'))) return false;
  if (existsSync(join(dir, 'model.safetensors'))) return true;
  const index = join(dir, 'model.safetensors.index.json');
  if (!existsSync(index)) return false;
  try {
    const map = (
      parseJsonText(readFileSync(index, 'utf8'), index) as {
        weight_map?: Record<string, string>;
      }
    ).weight_map;
    return map !== undefined && Object.values(map).every((f) => existsSync(join(dir, f)));
  } catch {
    return false;
  }
}

/**
 * The snapshot folder of a cached model at a revision (`snapshots/<commit>/`), if the cache
 * holds the whole model there; undefined otherwise.
 */
export function cachedModel(
  repoId: string,
  revision = 'main',
  cacheDir = hubCacheDir(),
): string | undefined {
  const repo = repoCacheFolder(cacheDir, repoId);
  const commit = cachedCommit(repo, revision);
  if (!commit) return undefined;
  const snapshot = join(repo, 'snapshots', commit);
  return existsSync(snapshot) && statSync(snapshot).isDirectory() && isCompleteModel(snapshot)
    ? snapshot
    : undefined;
}
