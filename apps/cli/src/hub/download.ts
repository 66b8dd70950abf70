import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream, existsSync, statSync } from 'node:fs';
import { copyFile, mkdir, rename, symlink, unlink, writeFile } from 'node:fs/promises';
import { dirname, join, relative } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { downloadFile, type ListFileEntry, listFiles, modelInfo } from '@huggingface/hub';
import { LoraError } from '@lora/core';
import { hubCacheDir, repoCacheFolder } from './cache.js';

/** Errors of hub downloads (`HUB_NOT_FOUND`, `HUB_AUTH`, `HUB_UNREACHABLE`, `HUB_CORRUPT`). */
export class HubError extends LoraError {}

/** The files of a model repository that the runtime reads: top-level config, weights, tokenizer. */
const WANTED = /^[^/]+\.(?:json|safetensors|txt|model|tiktoken)$/;

export interface DownloadOptions {
  /** Branch, tag or commit (default `main`). */
  readonly revision?: string;
  /** Default: {@link hubCacheDir}. */
  readonly cacheDir?: string;
  /** Hub address; default `HF_ENDPOINT`, else https://huggingface.co. */
  readonly endpoint?: string;
  /** Access token for gated or private models; default `HF_TOKEN`. */
  readonly token?: string;
  /** Bytes received so far over all files, the total, and the file being fetched. */
  readonly onProgress?: (done: number, total: number, file: string) => void;
}

function describeFailure(repoId: string, endpoint: string, error: unknown): HubError {
  const status = (error as { statusCode?: number }).statusCode;
  if (status === 401 || status === 403) {
    return new HubError(
      'HUB_AUTH',
      `${repoId}: the hub at ${endpoint} refused access (HTTP ${status}); for a gated or private model accept its terms on the hub and set HF_TOKEN to an access token.`,
      { repo: repoId, status },
      { cause: error },
    );
  }
  if (status === 404) {
    return new HubError(
      'HUB_NOT_FOUND',
      `${repoId}: no such model (or revision) on ${endpoint}; check the name, or give a local folder path.`,
      { repo: repoId, status },
      { cause: error },
    );
  }
  return new HubError(
    'HUB_UNREACHABLE',
    `${repoId}: cannot download from ${endpoint} (${(error as Error)?.message ?? String(error)}); check the network, or set HF_HUB_OFFLINE=1 to use only the local cache.`,
    { repo: repoId, status },
    { cause: error },
  );
}

async function sha256File(path: string): Promise<string> {
  const hash = createHash('sha256');
  await pipeline(createReadStream(path), hash);
  return hash.digest('hex');
}

/**
 * Downloads a model repository's config, weights and tokenizer files into the hub cache with
 * Python's layout (`blobs/<etag>`, `snapshots/<commit>/<file>` as relative symlinks,
 * `refs/<revision>`), so Python and this tool share one cache. A file interrupted mid-way stays
 * as `blobs/<etag>.incomplete` and the next run resumes it with an HTTP range request; LFS files
 * are checked against their SHA-256. Returns the snapshot folder.
 */
export async function downloadModel(
  repoId: string,
  options: DownloadOptions = {},
): Promise<string> {
  const endpoint = (
    options.endpoint ??
    process.env.HF_ENDPOINT ??
    'https://huggingface.co'
  ).replace(/\/+$/, '');
  const token = options.token ?? process.env.HF_TOKEN ?? process.env.HUGGING_FACE_HUB_TOKEN;
  const credentials = token ? { accessToken: token } : {};
  const repo = { type: 'model' as const, name: repoId };
  const revision = options.revision ?? 'main';
  const folder = repoCacheFolder(options.cacheDir ?? hubCacheDir(), repoId);

  let commit: string;
  const files: ListFileEntry[] = [];
  try {
    const info = await modelInfo({
      name: repoId,
      revision,
      hubUrl: endpoint,
      additionalFields: ['sha'],
      ...credentials,
    });
    commit = (info as { sha?: string }).sha ?? '';
    if (!/^[0-9a-f]{40}$/.test(commit))
      throw new Error(`the hub gave no commit for revision ${revision}`);
    for await (const entry of listFiles({
      repo,
      revision: commit,
      hubUrl: endpoint,
      ...credentials,
    }))
      if (entry.type === 'file' && WANTED.test(entry.path)) files.push(entry);
  } catch (error) {
    throw describeFailure(repoId, endpoint, error);
  }
  if (!files.some((f) => f.path === 'config.json')) {
    throw new HubError(
      'HUB_NOT_A_MODEL',
      `${repoId}: the repository has no config.json at its top level; it is not a transformers model.`,
      { repo: repoId },
    );
  }
  const snapshot = join(folder, 'snapshots', commit);
  const total = files.reduce((s, f) => s + f.size, 0);
  let done = 0;
  for (const f of files) {
    const pointer = join(snapshot, f.path);
    if (!existsSync(pointer)) {
      const etag = f.lfs?.oid ?? f.oid;
      if (!etag || !/^[0-9a-f]+$/.test(etag))
        throw new HubError('HUB_CORRUPT', `${repoId}: the hub gave no id for ${f.path}.`);
      const blob = join(folder, 'blobs', etag);
      if (!existsSync(blob)) {
        await fetchBlob(repoId, endpoint, credentials, commit, f, blob, (n) => {
          options.onProgress?.(done + n, total, f.path);
        });
      }
      await mkdir(dirname(pointer), { recursive: true });
      // Python links snapshot files to blobs relatively; where links are not allowed, a copy.
      await symlink(relative(dirname(pointer), blob), pointer).catch(() => copyFile(blob, pointer));
    }
    done += f.size;
    options.onProgress?.(done, total, f.path);
  }
  if (revision !== commit) {
    await mkdir(join(folder, 'refs'), { recursive: true });
    await writeFile(join(folder, 'refs', revision), commit);
  }
  return snapshot;
}

/** One file into `blobs/<etag>`, resuming `<etag>.incomplete`; `progress` gets bytes so far. */
async function fetchBlob(
  repoId: string,
  endpoint: string,
  credentials: { accessToken?: string },
  commit: string,
  f: ListFileEntry,
  blob: string,
  progress: (bytes: number) => void,
): Promise<void> {
  const partial = `${blob}.incomplete`;
  await mkdir(dirname(blob), { recursive: true });
  let have = existsSync(partial) ? statSync(partial).size : 0;
  if (have > f.size) {
    await unlink(partial);
    have = 0;
  }
  if (have < f.size) {
    try {
      const remote = await downloadFile({
        repo: { type: 'model', name: repoId },
        path: f.path,
        revision: commit,
        hubUrl: endpoint,
        ...credentials,
      });
      if (!remote) throw Object.assign(new Error(`${f.path} is missing`), { statusCode: 404 });
      const out = createWriteStream(partial, { flags: have > 0 ? 'a' : 'w' });
      let received = have;
      progress(received);
      const body = remote.slice(have).stream();
      await pipeline(
        body,
        async function* (chunks: AsyncIterable<Uint8Array>) {
          for await (const chunk of chunks) {
            received += chunk.length;
            progress(received);
            yield chunk;
          }
        },
        out,
      );
    } catch (error) {
      throw describeFailure(repoId, endpoint, error);
    }
  }
  const size = statSync(partial).size;
  const bad =
    size !== f.size
      ? `${size} bytes instead of ${f.size}`
      : f.lfs && (await sha256File(partial)) !== f.lfs.oid
        ? 'its SHA-256 does not match the hub'
        : undefined;
  if (bad) {
    await unlink(partial);
    throw new HubError(
      'HUB_CORRUPT',
      `${repoId}: ${f.path} came down with ${bad}; the partial file was removed, run again to download it anew.`,
      { repo: repoId, file: f.path },
    );
  }
  await rename(partial, blob);
}
