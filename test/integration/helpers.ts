/**
 * Shared helpers for the real-mount integration tests.
 *
 * Every child process is started asynchronously (execFile/spawn): the tests never block their event loop,
 * even though the FUSE server is a separate daemon process. Each test file owns one or more VdiskMount
 * objects, each in a fresh mkdtemp directory with its own store, and calls teardown() in afterAll, which
 * unmounts loop mounts, detaches loop devices backed by files of that directory, unmounts FUSE (lazily if
 * needed), kills the daemon if it is still alive and removes the directory.
 */
import { execFile, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, mkdir, open, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect } from 'vitest';

export const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
export const CLI = join(REPO, 'dist/cli/main.js');

export function requireBuild(): void {
  if (!existsSync(CLI)) {
    throw new Error(`${CLI} is missing: run \`npm run build\` before the integration tests`);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Child processes

export interface RunResult {
  code: number;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Run a program asynchronously; never throws for a non-zero exit (look at .code). */
export function run(file: string, args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv; input?: string } = {}): Promise<RunResult> {
  return new Promise((res, rej) => {
    const child = execFile(
      file,
      args,
      { cwd: opts.cwd, env: opts.env ?? process.env, maxBuffer: 64 * 1024 * 1024, encoding: 'utf8' },
      (err, stdout, stderr) => {
        if (err && typeof (err as NodeJS.ErrnoException).code === 'string') return rej(err); // ENOENT etc.
        const e = err as (Error & { code?: number; signal?: NodeJS.Signals }) | null;
        res({ code: e ? (e.code ?? 1) : 0, signal: e?.signal ?? null, stdout, stderr });
      },
    );
    if (opts.input !== undefined) child.stdin!.end(opts.input);
    else child.stdin?.end();
  });
}

/** fusermount3 (FUSE 3), or plain fusermount where only that is installed. */
export async function fusermount(args: string[]): Promise<RunResult> {
  try {
    return await run('fusermount3', args);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    return run('fusermount', args);
  }
}

/** `bash -c cmd`, asynchronously. */
export function sh(cmd: string, opts: { cwd?: string } = {}): Promise<RunResult> {
  return run('bash', ['-c', cmd], opts);
}

/** `bash -c cmd`; throws with stdout/stderr if it exits non-zero. */
export async function shOk(cmd: string, opts: { cwd?: string } = {}): Promise<string> {
  const r = await sh(cmd, opts);
  if (r.code !== 0) throw new Error(`command failed (exit ${r.code}): ${cmd}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
  return r.stdout;
}

/** Run the vdiskfs CLI. */
export function vdiskfs(args: string[]): Promise<RunResult> {
  requireBuild();
  return run(process.execPath, [CLI, ...args]);
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Wait (polling) until the process is gone; returns whether it is gone. Not an assertion on time. */
export async function waitForExit(pid: number, maxMs = 20_000): Promise<boolean> {
  const until = Date.now() + maxMs;
  while (isAlive(pid)) {
    if (Date.now() > until) return false;
    await sleep(50);
  }
  return true;
}

export async function isMountpoint(dir: string): Promise<boolean> {
  const text = await readFile('/proc/self/mountinfo', 'utf8');
  return text.split('\n').some((l) => l.split(' ')[4] === dir);
}

export async function mountTypeOf(dir: string): Promise<string | undefined> {
  const text = await readFile('/proc/self/mountinfo', 'utf8');
  for (const l of text.split('\n')) {
    const f = l.split(' ');
    if (f[4] !== dir) continue;
    const sep = f.indexOf('-');
    return f[sep + 1];
  }
  return undefined;
}

// ---------------------------------------------------------------------------------------------------------
// Data

/** Deterministic pseudo-random bytes (xorshift32 seeded by `seed`). */
export function randomBuffer(seed: number, len: number): Buffer {
  const buf = Buffer.alloc(len);
  let x = (seed * 2654435761 + 0x9e3779b9) >>> 0 || 1;
  const words = Math.floor(len / 4);
  for (let i = 0; i < words; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    buf.writeUInt32LE(x, i * 4);
  }
  for (let i = words * 4; i < len; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    buf[i] = x & 0xff;
  }
  return buf;
}

/** Compare buffers with a readable failure message (first differing byte) instead of dumping megabytes. */
export function expectSame(got: Buffer, want: Buffer, what: string): void {
  if (got.equals(want)) return;
  let i = 0;
  while (i < got.length && i < want.length && got[i] === want[i]) i++;
  expect.fail(`${what}: differs at byte ${i} (lengths ${got.length} vs ${want.length})`);
}

export const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** Read [offset, offset+length) of a file (short at EOF). */
export async function readRange(path: string, offset: number, length: number): Promise<Buffer> {
  const fh = await open(path, 'r');
  try {
    const out = Buffer.alloc(length);
    let got = 0;
    while (got < length) {
      const { bytesRead } = await fh.read(out, got, Math.min(length - got, 1 << 20), offset + got);
      if (bytesRead === 0) break;
      got += bytesRead;
    }
    return out.subarray(0, got);
  } finally {
    await fh.close();
  }
}

/** sha256 of a file range (reads in 1 MiB chunks). */
export async function sha256Range(path: string, offset: number, length: number): Promise<string> {
  const h = createHash('sha256');
  const fh = await open(path, 'r');
  try {
    const chunk = Buffer.alloc(1 << 20);
    let done = 0;
    while (done < length) {
      const { bytesRead } = await fh.read(chunk, 0, Math.min(chunk.length, length - done), offset + done);
      if (bytesRead === 0) break;
      h.update(chunk.subarray(0, bytesRead));
      done += bytesRead;
    }
  } finally {
    await fh.close();
  }
  return h.digest('hex');
}

/** pwrite the whole buffer at offset (optionally fsync); throws the errno error on failure. */
export async function writeAt(path: string, offset: number, data: Buffer, fsync = false): Promise<void> {
  const fh = await open(path, 'r+');
  try {
    let done = 0;
    while (done < data.length) {
      const { bytesWritten } = await fh.write(data, done, Math.min(data.length - done, 1 << 20), offset + done);
      if (bytesWritten === 0) throw new Error(`short write at ${offset + done}`);
      done += bytesWritten;
    }
    if (fsync) await fh.sync();
  } finally {
    await fh.close();
  }
}

/** Run fn and return the errno code it throws (or 'OK' if it does not throw). */
export async function errnoOf(fn: () => Promise<unknown>): Promise<string> {
  try {
    await fn();
    return 'OK';
  } catch (e) {
    return (e as NodeJS.ErrnoException).code ?? String(e);
  }
}

export const K = 1024;
export const M = 1024 * 1024;
export const G = 1024 * M;
export const T = 1024 * G;

/** `du --block-size=1` of a file: st_blocks * 512. */
export async function duBytes(path: string): Promise<number> {
  const out = await shOk(`du --block-size=1 ${q(path)}`);
  return Number(out.split(/\s+/)[0]);
}

/** The size column of `ls -l`. */
export async function lsSize(path: string): Promise<number> {
  const out = await shOk(`ls -l ${q(path)}`);
  return Number(out.trim().split(/\s+/)[4]);
}

/** Shell-quote. */
export function q(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

// ---------------------------------------------------------------------------------------------------------
// Status types (the shape of .vdisk/status.json)

// status.json's shape is the core's (read through the mount here).
import type { SnapshotStatus, DiskStatus, StoreStatus } from '../../src/control/status.js';
export type { SnapshotStatus, DiskStatus, StoreStatus };

export interface CtlResult {
  ok: boolean;
  /** errno code of the failed write, e.g. 'EINVAL' */
  code?: string;
}

// ---------------------------------------------------------------------------------------------------------
// Mounts

export interface MountOpts {
  poolSize?: string;
  /** extra CLI arguments for `vdiskfs mount` */
  extraArgs?: string[];
  /** replace the default `--store DIR [--pool-size S]` arguments entirely */
  replaceArgs?: string[];
}

const allMounts = new Set<VdiskMount>();

/**
 * One temp directory holding a mountpoint `mp/`, a store `store/` and scratch space; mount/unmount any
 * number of times. teardown() is safe to call in any state.
 */
export class VdiskMount {
  readonly root: string;
  readonly mp: string;
  readonly store: string;
  pid: number | undefined;
  /** loop mountpoints created through loopMount() and not yet unmounted */
  private loops = new Set<string>();
  private opts: MountOpts;

  private constructor(root: string, opts: MountOpts) {
    this.root = root;
    this.mp = join(root, 'mp');
    this.store = join(root, 'store');
    this.opts = opts;
  }

  /** A fresh temp dir, mounted. */
  static async create(opts: MountOpts = {}): Promise<VdiskMount> {
    requireBuild();
    const root = await mkdtemp(join(tmpdir(), 'vdiskfs-it-'));
    const m = new VdiskMount(root, opts);
    allMounts.add(m);
    await mkdir(m.mp);
    await m.mount();
    return m;
  }

  /** A fresh temp dir, not mounted (for offline CLI tests). */
  static async unmounted(opts: MountOpts = {}): Promise<VdiskMount> {
    requireBuild();
    const root = await mkdtemp(join(tmpdir(), 'vdiskfs-it-'));
    const m = new VdiskMount(root, opts);
    allMounts.add(m);
    await mkdir(m.mp);
    return m;
  }

  /** Mount with these arguments after `--store DIR` from now on (e.g. none: what the store recorded). */
  useExtraArgs(extraArgs: string[]): void {
    this.opts = { ...this.opts, extraArgs };
  }

  mountArgs(): string[] {
    if (this.opts.replaceArgs) return ['mount', this.mp, ...this.opts.replaceArgs];
    return ['mount', this.mp, '--store', this.store, ...(this.opts.poolSize ? ['--pool-size', this.opts.poolSize] : []), ...(this.opts.extraArgs ?? [])];
  }

  /** Mount (background mode); throws with the CLI's stderr if it fails. */
  async mount(): Promise<void> {
    const r = await vdiskfs(this.mountArgs());
    if (r.code !== 0) throw new Error(`vdiskfs mount failed (exit ${r.code}): ${r.stderr}`);
    if (!(await isMountpoint(this.mp))) throw new Error(`vdiskfs mount returned 0 but ${this.mp} is not a mountpoint`);
    const storeDir = this.opts.replaceArgs ? undefined : this.store;
    const info = await this.mountInfo(storeDir);
    if (!info) throw new Error('mounted.json missing after mount');
    this.pid = info.pid;
  }

  async mountInfo(storeDir: string | undefined = this.store): Promise<{ pid: number; mountpoint: string } | undefined> {
    if (!storeDir) storeDir = this.store;
    try {
      return JSON.parse(await readFile(join(storeDir, 'mounted.json'), 'utf8')) as { pid: number; mountpoint: string };
    } catch {
      return undefined;
    }
  }

  /** Clean unmount (`vdiskfs unmount`, i.e. fusermount3 -u) and wait for the daemon to exit. */
  async unmount(): Promise<void> {
    const r = await vdiskfs(['unmount', this.mp]);
    if (r.code !== 0) throw new Error(`vdiskfs unmount failed (exit ${r.code}): ${r.stderr}`);
    if (this.pid !== undefined && !(await waitForExit(this.pid))) throw new Error(`daemon ${this.pid} still alive after unmount`);
    this.pid = undefined;
  }

  /** Simulated crash: SIGKILL the daemon, then clear the dead mount with fusermount3 -uz. */
  async kill9(): Promise<void> {
    if (this.pid === undefined) throw new Error('not mounted');
    process.kill(this.pid, 'SIGKILL');
    if (!(await waitForExit(this.pid))) throw new Error(`daemon ${this.pid} survived SIGKILL`);
    this.pid = undefined;
    await fusermount(['-uz', this.mp]);
  }

  async remount(): Promise<void> {
    await this.unmount();
    await this.mount();
  }

  disk(name: string): string {
    return join(this.mp, name);
  }

  snap(disk: string, snap: string): string {
    return join(this.mp, '.vdisk', 'snapshots', disk, snap);
  }

  get vdisk(): string {
    return join(this.mp, '.vdisk');
  }

  /** Write one line to .vdisk/ctl (open O_WRONLY|O_TRUNC, one write, close); the write's errno is the result. */
  async ctl(line: string): Promise<CtlResult> {
    let fh;
    try {
      fh = await open(join(this.vdisk, 'ctl'), 'w');
      await fh.write(line.endsWith('\n') ? line : line + '\n');
      return { ok: true };
    } catch (e) {
      return { ok: false, code: (e as NodeJS.ErrnoException).code ?? String(e) };
    } finally {
      await fh?.close().catch(() => undefined);
    }
  }

  /** ctl() that must succeed; on failure the error names the errno and the last history line. */
  async ctlOk(line: string): Promise<void> {
    const r = await this.ctl(line);
    if (!r.ok) {
      const hist = (await this.history()).pop();
      throw new Error(`ctl '${line}' failed with ${r.code}: ${hist?.message ?? '?'}`);
    }
  }

  async status(): Promise<StoreStatus> {
    return JSON.parse(await readFile(join(this.vdisk, 'status.json'), 'utf8')) as StoreStatus;
  }

  async diskStatus(name: string): Promise<DiskStatus | undefined> {
    return (await this.status()).disks.find((d) => d.name === name);
  }

  async statusText(): Promise<string> {
    return readFile(join(this.vdisk, 'status'), 'utf8');
  }

  async history(): Promise<{ time: string; result: string; command: string; message: string }[]> {
    const text = await readFile(join(this.vdisk, 'history'), 'utf8');
    return text
      .split('\n')
      .filter((l) => l.length > 0)
      .map((l) => {
        const [time = '', result = '', command = '', ...rest] = l.split('\t');
        return { time, result, command, message: rest.join('\t') };
      });
  }

  /** A scratch directory inside the temp dir (not on the mount). */
  async scratch(name: string): Promise<string> {
    const d = join(this.root, name);
    await mkdir(d, { recursive: true });
    return d;
  }

  /** `mount -o OPTS image dir` (dir created under the temp dir); remembered for teardown. */
  async loopMount(image: string, name: string, opts = 'loop'): Promise<string> {
    const dir = await this.scratch(name);
    await shOk(`mount -o ${opts} ${q(image)} ${q(dir)}`);
    this.loops.add(dir);
    return dir;
  }

  async loopUmount(dir: string): Promise<void> {
    await shOk(`umount ${q(dir)}`);
    this.loops.delete(dir);
  }

  /**
   * A new disk `name` of `size` with ext4 on it holding a tree (makeTree(seed), kept in scratch `treeName`):
   * mkfs.ext4, loop-mounted on scratch `loopName`, the tree copied in, unmounted. Returns the disk file and
   * the tree's directory.
   */
  async ext4WithTree(name: string, size: string, seed: number, treeName: string, loopName: string): Promise<{ disk: string; tree: string }> {
    await this.ctlOk(`create ${name} ${size}`);
    const disk = this.disk(name);
    await shOk(`mkfs.ext4 -q -F ${q(disk)}`);
    const tree = await this.scratch(treeName);
    await makeTree(tree, seed);
    const lm = await this.loopMount(disk, loopName);
    await shOk(`cp -a ${q(tree)}/. ${q(lm)}/`);
    await this.loopUmount(lm);
    return { disk, tree };
  }

  /** Unmount everything this object created, detach its loop devices, kill its daemon, remove the dir. */
  async teardown(): Promise<void> {
    for (const dir of [...this.loops].reverse()) {
      const r = await run('umount', [dir]).catch(() => undefined);
      if (!r || r.code !== 0) await run('umount', ['-l', dir]).catch(() => undefined);
      this.loops.delete(dir);
    }
    // Loop devices whose backing file lives under our temp dir (mount -o loop autoclears, losetup may not).
    const l = await run('losetup', ['-l', '-n', '-O', 'NAME,BACK-FILE']).catch(() => undefined);
    for (const line of (l?.stdout ?? '').split('\n')) {
      const [dev, back] = line.trim().split(/\s+/, 2);
      if (dev && back && back.startsWith(this.root + '/')) await run('losetup', ['-d', dev]).catch(() => undefined);
    }
    const info = await this.mountInfo();
    const pids = new Set<number>([...(this.pid !== undefined ? [this.pid] : []), ...(info ? [info.pid] : [])]);
    if (await isMountpoint(this.mp)) {
      // Clean first (lets the daemon flush), lazily if that fails.
      const r = await fusermount(['-u', this.mp]).catch(() => undefined);
      if (!r || r.code !== 0) await fusermount(['-uz', this.mp]).catch(() => undefined);
    }
    for (const pid of pids) {
      if (!(await waitForExit(pid, 5000))) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          /* gone */
        }
        await waitForExit(pid, 5000);
      }
    }
    if (await isMountpoint(this.mp)) await fusermount(['-uz', this.mp]).catch(() => undefined);
    this.pid = undefined;
    allMounts.delete(this);
    await rm(this.root, { recursive: true, force: true }).catch(() => undefined);
  }
}

/** Tear down every VdiskMount created in this test file (use in afterAll). */
export async function teardownAll(): Promise<void> {
  for (const m of [...allMounts]) await m.teardown();
}

// ---------------------------------------------------------------------------------------------------------
// dd

/** dd with byte-granular seek/skip/count; returns the RunResult (dd's stderr has the summary). */
export function dd(args: Record<string, string | number>): Promise<RunResult> {
  return run(
    'dd',
    Object.entries(args).map(([k, v]) => `${k}=${v}`),
  );
}

/** Bytes copied, from dd's summary line ("N bytes (…) copied"). */
export function ddBytes(r: RunResult): number {
  const m = /(\d+) bytes/.exec(r.stderr);
  if (!m) throw new Error(`no dd summary in: ${r.stderr}`);
  return Number(m[1]);
}

/** Write `data` into `file` at byte `offset` with dd (conv=notrunc, optionally fsync), bs given. */
export async function ddWrite(scratchDir: string, file: string, offset: number, data: Buffer, opts: { bs?: number; fsync?: boolean } = {}): Promise<RunResult> {
  const src = join(scratchDir, `dd-src-${process.pid}-${Math.random().toString(36).slice(2)}`);
  await writeFile(src, data);
  try {
    return await dd({
      if: src,
      of: file,
      bs: opts.bs ?? 65536,
      seek: offset,
      oflag: 'seek_bytes',
      conv: opts.fsync ? 'notrunc,fsync' : 'notrunc',
      status: 'noxfer',
    });
  } finally {
    await rm(src, { force: true });
  }
}

/** Read [offset, offset+length) of `file` with dd (byte-granular skip/count); returns the bytes read. */
export async function ddRead(scratchDir: string, file: string, offset: number, length: number, bs = 65536): Promise<Buffer> {
  const dst = join(scratchDir, `dd-dst-${process.pid}-${Math.random().toString(36).slice(2)}`);
  try {
    const r = await dd({ if: file, of: dst, bs, skip: offset, count: length, iflag: 'skip_bytes,count_bytes', status: 'noxfer' });
    if (r.code !== 0) throw new Error(`dd read failed: ${r.stderr}`);
    return await readFile(dst);
  } finally {
    await rm(dst, { force: true });
  }
}

/** Spawn a node script (ESM, via -e/--input-type) asynchronously; resolves with its output and code. */
export function nodeScript(source: string, args: string[] = []): Promise<RunResult> {
  return new Promise((res, rej) => {
    const child = spawn(process.execPath, ['--input-type=module', '-e', source, '--', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', rej);
    child.on('close', (code, signal) => res({ code: code ?? 1, signal, stdout, stderr }));
  });
}

// ---------------------------------------------------------------------------------------------------------
// Filesystems on disks

/** Whether loop devices and mkfs.ext4 are usable; prints why not (the tests then skip visibly). */
export async function loopAvailable(who: string): Promise<boolean> {
  const r = await sh('command -v losetup >/dev/null && command -v mkfs.ext4 >/dev/null && test -e /dev/loop-control && losetup -f');
  if (r.code !== 0) console.warn(`${who}: loop-device tests SKIPPED: loop devices or mkfs.ext4 unavailable (${r.stderr.trim() || 'losetup -f failed'})`);
  return r.code === 0;
}

/** ~50 files of random content (0 to ~300 KiB) in nested directories, deterministic. */
export async function makeTree(dir: string, seed: number): Promise<void> {
  let n = 0;
  for (let d = 0; d < 5; d++) {
    const sub = join(dir, `dir${d}`, d % 2 ? `nested${d}` : '');
    await mkdir(sub, { recursive: true });
    for (let f = 0; f < 10; f++) {
      const len = (n * 7919 + seed * 104729) % (300 * 1024) + (f === 0 ? 0 : 1);
      await writeFile(join(sub, `file${f}.bin`), randomBuffer(seed * 1000 + n, f === 9 ? 0 : len));
      n++;
    }
  }
  await writeFile(join(dir, 'README.txt'), `tree ${seed}\n`);
}

