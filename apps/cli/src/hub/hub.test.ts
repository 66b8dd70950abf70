import { createHash } from 'node:crypto';
import { existsSync, lstatSync, readFileSync, readlinkSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { resolveModelPath } from '../model-source.js';
import { runCli } from '../test-utils/run-cli.js';
import { cachedModel, hubCacheDir, repoCacheFolder } from './cache.js';
import { downloadModel } from './download.js';

const stories = fileURLToPath(
  new URL('../../../../../shared/fixtures/llama2c-stories260k', import.meta.url),
);
const haveStories = existsSync(stories);
if (!haveStories)
  console.warn(`SKIPPED: ${stories} is absent; the hub download tests need its files.`);

const REPO = 'tiny-org/stories';
const COMMIT = 'a'.repeat(40);
const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
/** git's blob id: sha1 of "blob <size>\0" + content (the hub's `oid` of a non-LFS file). */
const gitOid = (b: Uint8Array) =>
  createHash('sha1')
    .update(Buffer.concat([Buffer.from(`blob ${b.length}\0`), b]))
    .digest('hex');

interface HubFile {
  path: string;
  bytes: Buffer;
  lfs: boolean;
}

/** A stand-in for the hub API on 127.0.0.1: model info, file tree, resolve with HTTP ranges. */
class FakeHub {
  readonly requests: { url: string; range?: string; auth?: string }[] = [];
  files: HubFile[] = [];
  /** Bytes served instead of a file's real bytes (to test the integrity check). */
  tamper = new Map<string, Buffer>();
  token: string | undefined;
  private server!: Server;
  url = '';

  async start(): Promise<void> {
    this.server = createServer((req, res) => this.handle(req, res));
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', r));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  stop(): Promise<void> {
    return new Promise((r) => this.server.close(() => r()));
  }

  private handle(req: IncomingMessage, res: import('node:http').ServerResponse): void {
    const url = new URL(req.url ?? '/', this.url);
    this.requests.push({
      url: url.pathname,
      range: req.headers.range,
      auth: req.headers.authorization,
    });
    if (this.token && req.headers.authorization !== `Bearer ${this.token}`) {
      res.writeHead(401, { 'content-type': 'application/json' }).end('{"error":"auth"}');
      return;
    }
    const json = (body: unknown): void => {
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(body));
    };
    if (url.pathname === `/api/models/${REPO}/revision/main`) {
      json({ _id: '1', id: REPO, sha: COMMIT, private: false, downloads: 0, likes: 0 });
      return;
    }
    if (url.pathname === `/api/models/${REPO}/tree/${COMMIT}`) {
      json(
        this.files.map((f) => ({
          type: 'file',
          path: f.path,
          size: f.bytes.length,
          oid: gitOid(f.bytes),
          ...(f.lfs
            ? { lfs: { oid: sha256(f.bytes), size: f.bytes.length, pointerSize: 130 } }
            : {}),
        })),
      );
      return;
    }
    const prefix = `/${REPO}/resolve/${COMMIT}/`;
    const file = url.pathname.startsWith(prefix)
      ? this.files.find((f) => f.path === decodeURIComponent(url.pathname.slice(prefix.length)))
      : undefined;
    if (!file) {
      res.writeHead(404, { 'x-error-code': 'EntryNotFound' }).end();
      return;
    }
    const bytes = this.tamper.get(file.path) ?? file.bytes;
    const etag = `"${file.lfs ? sha256(file.bytes) : gitOid(file.bytes)}"`;
    const m = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? '');
    if (!m) {
      res.writeHead(200, { etag, 'content-length': bytes.length }).end(bytes);
      return;
    }
    const start = Number(m[1]);
    const end = m[2] === '' ? bytes.length - 1 : Math.min(Number(m[2]), bytes.length - 1);
    res
      .writeHead(206, {
        etag,
        'content-range': `bytes ${start}-${end}/${bytes.length}`,
        'content-length': end - start + 1,
      })
      .end(bytes.subarray(start, end + 1));
  }
}

const ENV_KEYS = ['HF_HUB_CACHE', 'HF_HOME', 'HF_ENDPOINT', 'HF_TOKEN', 'HF_HUB_OFFLINE'] as const;

describe('hub cache location', () => {
  it('follows huggingface_hub: HF_HUB_CACHE, then HF_HOME/hub, then XDG_CACHE_HOME, then ~/.cache', () => {
    expect(hubCacheDir({ HF_HUB_CACHE: '/a', HF_HOME: '/b' })).toBe('/a');
    expect(hubCacheDir({ HF_HOME: '/b', XDG_CACHE_HOME: '/c' })).toBe(join('/b', 'hub'));
    expect(hubCacheDir({ XDG_CACHE_HOME: '/c' })).toBe(join('/c', 'huggingface', 'hub'));
    expect(hubCacheDir({})).toMatch(/\.cache[\\/]huggingface[\\/]hub$/);
  });
});

describe.skipIf(!haveStories)('hub names', () => {
  const hub = new FakeHub();
  let dir: string;
  const saved: Partial<Record<(typeof ENV_KEYS)[number], string>> = {};

  beforeAll(async () => {
    await hub.start();
    const read = (f: string) => readFileSync(join(stories, f));
    hub.files = [
      { path: 'config.json', bytes: read('config.json'), lfs: false },
      { path: 'tokenizer.json', bytes: read('tokenizer.json'), lfs: false },
      { path: 'model.safetensors', bytes: read('model.safetensors'), lfs: true },
      // Not needed to run the model: never downloaded.
      { path: 'pytorch_model.bin', bytes: Buffer.from('not wanted'), lfs: true },
      { path: 'original/params.json', bytes: Buffer.from('{}'), lfs: false },
    ];
  });
  afterAll(() => hub.stop());
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'lora-hub-'));
    for (const k of ENV_KEYS) saved[k] = process.env[k];
    for (const k of ENV_KEYS) delete process.env[k];
    process.env.HF_HUB_CACHE = join(dir, 'cache');
    process.env.HF_ENDPOINT = hub.url;
    hub.requests.length = 0;
    hub.tamper.clear();
    hub.token = undefined;
  });
  afterEach(async () => {
    for (const k of ENV_KEYS) {
      if (saved[k] === undefined) delete process.env[k];
      else process.env[k] = saved[k];
    }
    await rm(dir, { recursive: true, force: true });
  });

  const model = () => hub.files.find((f) => f.path === 'model.safetensors')!;
  const repoFolder = () => repoCacheFolder(join(dir, 'cache'), REPO);

  it('downloads into the Python cache layout: blobs by etag, relative snapshot links, refs/main', async () => {
    const snapshot = await downloadModel(REPO);
    expect(snapshot).toBe(join(repoFolder(), 'snapshots', COMMIT));
    expect(readFileSync(join(repoFolder(), 'refs', 'main'), 'utf8')).toBe(COMMIT);
    const link = join(snapshot, 'model.safetensors');
    expect(lstatSync(link).isSymbolicLink()).toBe(true);
    expect(readlinkSync(link)).toBe(join('..', '..', 'blobs', sha256(model().bytes)));
    const config = hub.files[0];
    expect(readlinkSync(join(snapshot, 'config.json'))).toBe(
      join('..', '..', 'blobs', gitOid(config.bytes)),
    );
    expect(Buffer.compare(readFileSync(link), model().bytes)).toBe(0);
    expect(existsSync(join(snapshot, 'pytorch_model.bin'))).toBe(false);
    expect(existsSync(join(snapshot, 'original'))).toBe(false);
    expect(cachedModel(REPO)).toBe(snapshot);
  });

  it('resumes an interrupted file with a range request', async () => {
    const bytes = model().bytes;
    const half = Math.floor(bytes.length / 2);
    const blob = join(repoFolder(), 'blobs', sha256(bytes));
    await mkdir(join(repoFolder(), 'blobs'), { recursive: true });
    await writeFile(`${blob}.incomplete`, bytes.subarray(0, half));
    await downloadModel(REPO);
    const ranged = hub.requests.filter(
      (r) =>
        r.url.endsWith('/model.safetensors') && r.range === `bytes=${half}-${bytes.length - 1}`,
    );
    expect(ranged).toHaveLength(1);
    expect(sha256(await readFile(blob))).toBe(sha256(bytes));
    expect(existsSync(`${blob}.incomplete`)).toBe(false);
  });

  it('refuses a file whose SHA-256 differs from the hub, leaving nothing behind', async () => {
    const bad = Buffer.from(model().bytes);
    bad[bad.length - 1] ^= 1;
    hub.tamper.set('model.safetensors', bad);
    const err = await downloadModel(REPO).catch((e) => e);
    expect(err).toMatchObject({ code: 'HUB_CORRUPT' });
    expect(err.message).toContain('SHA-256');
    const blob = join(repoFolder(), 'blobs', sha256(model().bytes));
    expect(existsSync(blob) || existsSync(`${blob}.incomplete`)).toBe(false);
  });

  it('sends HF_TOKEN; without it a gated model says how to get access', async () => {
    hub.token = 'hf_secret';
    const err = await downloadModel(REPO).catch((e) => e);
    expect(err).toMatchObject({ code: 'HUB_AUTH' });
    expect(err.message).toContain('HF_TOKEN');
    process.env.HF_TOKEN = 'hf_secret';
    await downloadModel(REPO);
    expect(hub.requests.every((r) => r.auth === 'Bearer hf_secret' || r.auth === undefined)).toBe(
      true,
    );
    expect(hub.requests.at(-1)?.auth).toBe('Bearer hf_secret');
  });

  it('an unknown name is a clear error', async () => {
    const err = await downloadModel('tiny-org/nothing').catch((e) => e);
    expect(err).toMatchObject({ code: 'HUB_NOT_FOUND' });
  });

  it('lora generate --model org/name downloads once, then runs from the cache offline, same text as the folder', async () => {
    const args = ['generate', '--prompt', 'Once', '--max-tokens', '6', '--json'];
    const fromFolder = await runCli([...args, '--model', stories]);
    expect(fromFolder.code).toBe(0);
    const first = await runCli([...args, '--model', REPO]);
    expect(first.code).toBe(0);
    expect(JSON.parse(first.stdout).text).toBe(JSON.parse(fromFolder.stdout).text);
    const fetched = hub.requests.length;
    process.env.HF_HUB_OFFLINE = '1';
    const again = await runCli([...args, '--model', REPO]);
    expect(again.code).toBe(0);
    expect(JSON.parse(again.stdout).text).toBe(JSON.parse(fromFolder.stdout).text);
    expect(hub.requests.length).toBe(fetched);
  });

  it('reads a cache written by Python (refs/main, snapshot symlinks), with no network', async () => {
    // The layout huggingface_hub writes: blobs/<etag>, snapshots/<commit>/<file> -> ../../blobs/<etag>.
    const commit = 'b'.repeat(40);
    const repo = repoFolder();
    await mkdir(join(repo, 'blobs'), { recursive: true });
    await mkdir(join(repo, 'snapshots', commit), { recursive: true });
    await mkdir(join(repo, 'refs'), { recursive: true });
    await writeFile(join(repo, 'refs', 'main'), commit);
    for (const f of ['config.json', 'model.safetensors', 'tokenizer.json']) {
      const bytes = readFileSync(join(stories, f));
      const etag = f === 'model.safetensors' ? sha256(bytes) : gitOid(bytes);
      await writeFile(join(repo, 'blobs', etag), bytes);
      await symlink(join('..', '..', 'blobs', etag), join(repo, 'snapshots', commit, f));
    }
    process.env.HF_ENDPOINT = 'http://127.0.0.1:9'; // nothing listens: any request would fail
    expect(await resolveModelPath(REPO)).toBe(join(repo, 'snapshots', commit));
    expect(await resolveModelPath(`${REPO}@${commit}`)).toBe(join(repo, 'snapshots', commit));
    const plan = await runCli(['plan', REPO, '--json']);
    expect(plan.code).toBe(0);
    expect(JSON.parse(plan.stdout).source).toBe(join(repo, 'snapshots', commit, 'config.json'));
    // A local folder of the same name wins over the hub name.
    const cwd = process.cwd();
    try {
      process.chdir(dir);
      await mkdir(REPO, { recursive: true });
      expect(await resolveModelPath(REPO)).toBe(REPO);
    } finally {
      process.chdir(cwd);
    }
  });
});
