import { existsSync, lstatSync, readdirSync, realpathSync, statSync } from 'node:fs';
import { isAbsolute, join, relative, sep } from 'node:path';
import { type Adapter, loadPeftAdapter, readAdapterConfig } from '@lora/adapters';
import { matchTargets } from '@lora/core';
import { ServeError } from './errors.js';

/** Adapter names: one path segment of letters, digits, `.`, `_`, `-` (not `.` or `..`), at most 128. */
const NAME = /^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$/;

/**
 * The adapters folder of a server: each subfolder is a PEFT adapter named by the subfolder.
 * Names never leave the folder: they are single path segments, and the resolved real path
 * (symlinks followed) must stay inside the folder's real path.
 */
export class AdapterFolder {
  readonly root: string;
  readonly #realRoot: string;

  constructor(root: string) {
    if (!existsSync(root) || !statSync(root).isDirectory()) {
      throw new ServeError(400, 'ADAPTERS_FOLDER_MISSING', `--adapters ${root} is not a folder.`, {
        path: root,
      });
    }
    this.root = root;
    this.#realRoot = realpathSync(root);
  }

  /** Names of the subfolders (each a candidate adapter), sorted. */
  names(): string[] {
    return readdirSync(this.root, { withFileTypes: true })
      .filter((d) => NAME.test(d.name) && this.#isInsideFolder(join(this.root, d.name)))
      .map((d) => d.name)
      .sort();
  }

  /**
   * The folder of adapter `name`. Throws `ADAPTER_NAME_INVALID` (400) for a name that is not a
   * single safe segment or that resolves outside the folder, `ADAPTER_NOT_FOUND` (404) when absent.
   */
  path(name: string): string {
    if (typeof name !== 'string' || !NAME.test(name)) {
      throw new ServeError(
        400,
        'ADAPTER_NAME_INVALID',
        `Adapter name ${JSON.stringify(String(name).slice(0, 140))} is not allowed: use one folder name of the adapters folder (letters, digits, '.', '_', '-'; no '/', no '..').`,
        { adapter: name },
      );
    }
    const path = join(this.root, name);
    if (!existsSync(path)) {
      throw new ServeError(
        404,
        'ADAPTER_NOT_FOUND',
        `Adapter "${name}" does not exist: no folder ${name} in the adapters folder. GET /v1/models lists the adapters.`,
        { adapter: name },
      );
    }
    if (!this.#isInsideFolder(path)) {
      throw new ServeError(
        400,
        'ADAPTER_NAME_INVALID',
        `Adapter "${name}" resolves outside the adapters folder (a symbolic link out); it is refused.`,
        { adapter: name },
      );
    }
    return path;
  }

  /** Loads adapter `name` (PEFT folder), with the bytes its factors hold. */
  async load(name: string): Promise<{ adapter: Adapter; bytes: number }> {
    const path = this.path(name);
    const { adapter } = await loadPeftAdapter(path);
    let bytes = 0;
    for (const m of adapter.modules.values()) bytes += m.A.data.byteLength + m.B.data.byteLength;
    return { adapter, bytes };
  }

  /**
   * Which of `moduleNames` the adapters of the folder target, and their largest rank, read from
   * each `adapter_config.json` (no weights). Folders whose config cannot be read are listed in
   * `broken` with the reason, and skipped.
   */
  async survey(moduleNames: readonly string[]): Promise<{
    targets: Set<string>;
    rank: number;
    adapters: string[];
    broken: { name: string; reason: string }[];
  }> {
    const targets = new Set<string>();
    let rank = 0;
    const adapters: string[] = [];
    const broken: { name: string; reason: string }[] = [];
    for (const name of this.names()) {
      try {
        const { config } = await readAdapterConfig(join(this.path(name), 'adapter_config.json'));
        for (const m of matchTargets(config, moduleNames)) targets.add(m);
        rank = Math.max(rank, config.r, ...Object.values(config.rank_pattern ?? {}));
        adapters.push(name);
      } catch (e) {
        broken.push({ name, reason: (e as Error).message });
      }
    }
    return { targets, rank, adapters, broken };
  }

  #isInsideFolder(path: string): boolean {
    try {
      if (!lstatSync(path).isDirectory() && !statSync(path).isDirectory()) return false;
      const rel = relative(this.#realRoot, realpathSync(path));
      return rel !== '' && !rel.startsWith(`..${sep}`) && rel !== '..' && !isAbsolute(rel);
    } catch {
      return false;
    }
  }
}
