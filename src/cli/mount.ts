/**
 * `vdiskfs [mount] MOUNTPOINT`: in the foreground (-f) open the store, mount, and serve until SIGINT/SIGTERM
 * or an external `fusermount -u`; in the background, start the same command as a detached child and
 * return only when it reports the mount ready (exit 0) or failed (exit non-zero, reason on stderr).
 */
import { spawn } from 'node:child_process';
import { readFile, rm, stat, writeFile, mkdir } from 'node:fs/promises';
import { resolve } from 'node:path';
import { Registry } from '../disk/registry.js';
import { Tree } from '../fuse/nodes.js';
import { mountTree, type Mounted } from '../fuse/mount.js';
import { configureLog, logger, reopenLog } from '../log.js';
import { logPath, mountInfoPath, parseBlockStore } from '../meta/db.js';
import { parseReadahead, parseSize, parseTableCache } from '../util/size.js';
import { mountDevice } from '../util/mountinfo.js';
import { errorCode, errorMessage, invalid } from '../errors.js';
import { storeDir } from './storeDir.js';
import { installSections } from '../fuse/sections.js';

export interface MountArgs {
  mountpoint: string;
  store?: string;
  poolSize?: string;
  /** `file` or `leveldb`: where a new store keeps block data; an existing store must match. */
  blockStore?: string;
  /** `rados` stores: the cluster's ceph.conf (default: the recorded one, else /etc/ceph/ceph.conf). */
  cephConf?: string;
  /** `rados` stores: the Ceph pool a new store puts its objects in. */
  radosPool?: string;
  /** A store that lives in the cluster (its id, the object prefix), mounted from this store directory. */
  radosStore?: string;
  /** Kernel readahead for the mount (a size; 0 keeps the kernel default). */
  readahead?: string;
  /** Memory for cached table entries (a size; meta/table.ts EntryCache). */
  tableCache?: string;
  foreground?: boolean;
  options?: string[];
  logLevel?: string;
}

/** mount(8) passes options we must not hand to FUSE (and every `x-…` and `comment=…` of fstab). */
const DROPPED = new Set(['rw', 'defaults', 'auto', 'noauto', 'user', 'nouser', 'users', '_netdev', 'nofail', 'dev', 'suid', 'exec', 'nodev', 'nosuid', 'noexec', 'async', 'atime', 'noatime', 'relatime']);

/** Split -o lists into our own long options (name=value) and options for FUSE. */
export function parseMountOptions(args: MountArgs): MountArgs & { fuseOptions: string[] } {
  const out: MountArgs & { fuseOptions: string[] } = { ...args, fuseOptions: [] };
  for (const o of (args.options ?? []).flatMap((s) => s.split(',')).filter(Boolean)) {
    const eq = o.indexOf('=');
    const k = (eq < 0 ? o : o.slice(0, eq)).replace(/_/g, '-');
    const v = eq < 0 ? '' : o.slice(eq + 1);
    if (k === 'store') out.store = v;
    else if (k === 'pool-size') out.poolSize = v;
    else if (k === 'block-store') out.blockStore = v;
    else if (k === 'ceph-conf') out.cephConf = v;
    else if (k === 'rados-pool') out.radosPool = v;
    else if (k === 'rados-store') out.radosStore = v;
    else if (k === 'readahead') out.readahead = v;
    else if (k === 'table-cache') out.tableCache = v;
    else if (k === 'log-level') out.logLevel = v;
    else if (k === 'foreground') out.foreground = true;
    else if (!DROPPED.has(o) && !o.startsWith('x-') && !o.startsWith('comment=')) out.fuseOptions.push(o);
  }
  return out;
}

async function isMounted(mountpoint: string): Promise<boolean> {
  return mountDevice(await readFile('/proc/self/mountinfo', 'utf8').catch(() => ''), mountpoint) !== undefined;
}

export async function mountForeground(raw: MountArgs, notify?: (msg: Verdict) => void): Promise<void> {
  const args = parseMountOptions(raw);
  const dir = storeDir(args.store);
  const mountpoint = resolve(args.mountpoint);
  const poolSize = args.poolSize ? parseSize(args.poolSize) : undefined;
  if (poolSize !== undefined && poolSize <= 0) throw invalid('pool size must be positive');
  const blockStore = args.blockStore !== undefined ? parseBlockStore(args.blockStore) : undefined;
  const readahead = args.readahead !== undefined ? parseReadahead(args.readahead) : undefined;
  const tableCache = args.tableCache !== undefined ? parseTableCache(args.tableCache) : undefined;
  // Fail before creating anything where we can; a store directory (and any parent) this mount creates is
  // removed again if the mount fails later.
  // (ENOTCONN: the dead mount of a killed daemon, which mountTree clears and mounts over.)
  const mp = await stat(mountpoint).then(
    (st) => (st.isDirectory() ? undefined : 'not a directory'),
    (e: NodeJS.ErrnoException) => (e.code === 'ENOTCONN' ? undefined : e.code === 'ENOENT' ? 'no such directory' : e.message),
  );
  if (mp) throw invalid(`cannot mount ${mountpoint}: ${mp}`);
  const created = await mkdir(dir, { recursive: true });
  configureLog({ level: args.logLevel ?? 'info', file: logPath(dir), stderr: !!args.foreground && !notify });
  const log = logger('mount');
  const missing = SERVER_NODE_FLAGS.filter((f) => !process.execArgv.includes(f));
  if (missing.length) log.info({ missing }, `serving without the node flags ${missing.join(' ')}: writes may spend more time in the garbage collector (start node with them, or mount in the background)`);
  const unset = Object.keys(SERVER_ENV).filter((k) => process.env[k] === undefined);
  if (unset.length) log.info({ unset }, `serving without ${unset.map((k) => `${k}=${SERVER_ENV[k]}`).join(' ')} in the environment: writes may spend more time in page faults (set them as a background mount does, or mount in the background)`);
  const removeCreated = async (): Promise<void> => {
    if (created) await rm(created, { recursive: true, force: true }).catch(() => undefined);
  };
  let reg: Registry;
  try {
    const rados = { ...(args.cephConf !== undefined ? { conf: resolve(args.cephConf) } : {}), ...(args.radosPool !== undefined ? { pool: args.radosPool } : {}), ...(args.radosStore !== undefined ? { store: args.radosStore } : {}) };
    reg = await Registry.open({ dir, ...(poolSize !== undefined ? { poolSize } : {}), ...(tableCache !== undefined ? { tableCache } : {}), ...(blockStore !== undefined ? { blockStore } : {}), ...(Object.keys(rados).length ? { rados } : {}) });
  } catch (e) {
    await removeCreated();
    throw e;
  }
  let mounted: Mounted | undefined;
  try {
    const tree = new Tree(reg);
    installSections(tree, reg);
    // Written before mounting: whoever sees the mount can already find out who serves it.
    await writeFile(mountInfoPath(dir), JSON.stringify({ pid: process.pid, mountpoint }));
    // VDISKFS_FUSE_WORKERS: native request workers (1..64; default DEFAULT_MAX_CONCURRENCY), for measuring.
    const workers = process.env.VDISKFS_FUSE_WORKERS ? Number(process.env.VDISKFS_FUSE_WORKERS) : undefined;
    if (workers !== undefined && !(Number.isInteger(workers) && workers >= 1 && workers <= 64)) throw invalid('VDISKFS_FUSE_WORKERS must be an integer from 1 to 64');
    mounted = await mountTree(reg, tree, { mountpoint, storeDir: dir, fuseOptions: args.fuseOptions, ...(readahead !== undefined ? { readahead } : {}), ...(workers !== undefined ? { maxConcurrency: workers } : {}) });
  } catch (e) {
    await mounted?.unmount().catch(() => undefined);
    await rm(mountInfoPath(dir), { force: true });
    await reg.close();
    await removeCreated();
    throw e;
  }
  log.info({ store: dir, mountpoint, pid: process.pid, log: logPath(dir) }, 'vdiskfs ready');
  let stopping = false;
  // SIGTERM/SIGINT (systemctl stop, Ctrl-C): answer the requests in flight, refuse new ones (ENOTCONN, as
  // the kernel does once the mount is gone), flush, unmount, close the store, exit 0. An unmount from
  // outside (fusermount3 -u, umount, vdiskfs unmount) takes the same path once the watch below sees it.
  const stop = async (why: string): Promise<void> => {
    if (stopping) return;
    stopping = true;
    clearInterval(watch);
    log.info({ why }, 'stopping: finishing the requests in flight');
    let code = 0;
    try {
      const { inFlight, open } = await mounted!.drain();
      await reg.sync();
      log.info({ inFlight, stillOpen: open }, 'requests finished and data flushed; unmounting');
      await mounted!.unmount();
    } catch (e) {
      code = 1;
      log.error({ err: e }, 'flush or unmount failed');
    }
    await reg.close().catch((e) => {
      code = 1;
      log.error({ err: e }, 'closing the store failed');
    });
    await rm(mountInfoPath(dir), { force: true });
    log.info({ why, mountpoint }, code === 0 ? 'stopped: flushed, unmounted and closed' : 'stopped with errors (above)');
    process.exit(code);
  };
  process.on('SIGINT', () => void stop('SIGINT'));
  process.on('SIGTERM', () => void stop('SIGTERM'));
  // SIGHUP (logrotate's postrotate, `systemctl reload`): reopen the log file at its path; the mount stays.
  process.on('SIGHUP', () => {
    reopenLog();
    log.info({ log: logPath(dir) }, 'log file reopened (SIGHUP)');
  });
  // `fusermount -u` from outside: notice the mount is gone and close the store cleanly.
  const watch = setInterval(() => {
    void isMounted(mountpoint).then((m) => {
      if (!m) void stop('unmounted from outside');
    });
  }, 1000);
  notify?.({ ok: true });
}

/** What the daemon child tells its parent: ready, or why not (the typed error's code, for the exit code). */
interface Verdict {
  ok: boolean;
  error?: string;
  code?: string;
}

/**
 * V8 flags for the process that serves a mount (the background mount's child gets them; a foreground mount
 * started without them says so in its log). The binding hands every FUSE write a fresh Buffer; with V8's
 * default sizing the daemon's small old generation (~8 MB) sits near its limit with less room left than the
 * young generation holds, and V8 then starts an incremental mark-compact every few MB of writes (`--trace-gc`:
 * ~85 per GiB of `dd`, 10–30 % of the daemon's thread). A preconfigured initial old-space size is also the
 * floor V8 keeps for that limit, so the storm does not come back after a collection: 0 mark-compacts in
 * 6 GiB written, for ~40 MB more resident memory (README, *Performance*).
 */
export const SERVER_NODE_FLAGS: readonly string[] = ['--initial-old-space-size=128'];

/**
 * glibc malloc settings for the process that serves a mount (the background mount's child gets them unless
 * its caller set them; the bench gives them to null FUSE too):
 * - MALLOC_ARENA_MAX=2: FUSE serves requests on several threads, and glibc gives each its own malloc arena,
 *   which inflates resident memory for no gain.
 * - MALLOC_MMAP_THRESHOLD_ 2 MiB, MALLOC_TRIM_THRESHOLD_ 32 MiB: the binding hands every FUSE write a fresh
 *   Buffer of up to 1 MiB, freed in bunches by the young-generation collections. With glibc's defaults the
 *   freed top of the heap went back to the kernel each time, and the next buffers faulted every page in
 *   again: 25–65 page faults per MiB written, each dear in a VM whose host takes freed memory back. With
 *   these, ~16 per MiB (a 16 MiB trim threshold left ~25) and the same peak resident memory in a 1 GiB
 *   `dd`; with the table's read-ahead (meta/table.ts), 1 GiB `dd` into a disk ran +35 %, and into
 *   `import/` took 2.8–3.1 s instead of 3.4–4.3 (README, *Design*).
 */
export const SERVER_ENV: Readonly<Record<string, string>> = {
  MALLOC_ARENA_MAX: '2',
  MALLOC_MMAP_THRESHOLD_: String(2 * 1024 * 1024),
  MALLOC_TRIM_THRESHOLD_: String(32 * 1024 * 1024),
};

/** `base` with SERVER_ENV's variables that it does not set itself. */
export function serverEnv(base: NodeJS.ProcessEnv = process.env): NodeJS.ProcessEnv {
  const env = { ...base };
  for (const [k, v] of Object.entries(SERVER_ENV)) env[k] ??= v;
  return env;
}

/** Start the foreground server as a detached child and wait for its verdict. */
export async function mountBackground(raw: MountArgs): Promise<void> {
  const argv = [...SERVER_NODE_FLAGS, process.argv[1]!, 'mount', raw.mountpoint, '--daemon-child'];
  if (raw.store) argv.push('--store', raw.store);
  if (raw.poolSize) argv.push('--pool-size', raw.poolSize);
  if (raw.blockStore) argv.push('--block-store', raw.blockStore);
  if (raw.cephConf) argv.push('--ceph-conf', resolve(raw.cephConf));
  if (raw.radosPool) argv.push('--rados-pool', raw.radosPool);
  if (raw.radosStore) argv.push('--rados-store', raw.radosStore);
  if (raw.readahead) argv.push('--readahead', raw.readahead);
  if (raw.tableCache) argv.push('--table-cache', raw.tableCache);
  if (raw.logLevel) argv.push('--log-level', raw.logLevel);
  for (const o of raw.options ?? []) argv.push('-o', o);
  const child = spawn(process.execPath, argv, { detached: true, env: serverEnv(), stdio: ['ignore', 'ignore', 'pipe', 'ipc'] });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const verdict = await new Promise<Verdict>((res) => {
    child.once('message', (m) => res(m as Verdict));
    child.once('exit', (code) => res({ ok: false, error: stderr.trim() || `mount process exited with code ${code}` }));
  });
  if (!verdict.ok) {
    // What the child printed (libfuse's own reason, e.g. "fuse: unknown option(s): `-o foo'") comes first.
    await new Promise<void>((res) => {
      if (child.exitCode !== null && child.stderr!.readableEnded) return res();
      child.once('close', () => res());
      setTimeout(res, 5000).unref();
    });
    const printed = stderr.trim();
    if (printed && printed !== verdict.error) process.stderr.write(printed + '\n');
    // The daemon's typed error keeps its exit code (cli/exit.ts); an untyped failure (libfuse) is 1.
    throw Object.assign(new Error(verdict.error ?? 'mount failed'), verdict.code ? { code: verdict.code } : {});
  }
  child.disconnect();
  child.stderr!.destroy();
  child.unref();
}

export async function runDaemonChild(raw: MountArgs): Promise<void> {
  const send = (m: Verdict): void => {
    process.send?.(m);
  };
  try {
    await mountForeground({ ...raw, foreground: true }, send);
    process.disconnect?.();
  } catch (e) {
    const code = errorCode(e);
    send({ ok: false, error: errorMessage(e), ...(code ? { code } : {}) });
    process.exit(1);
  }
}
