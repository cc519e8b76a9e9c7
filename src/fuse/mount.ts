/**
 * The only code that uses the FUSE binding (fuse-napi, FUSE 3.1 API; binding.ts loads it): mounting the
 * operation table of ops.ts with the options we need (1 MiB requests, subtype, timeouts, auto_cache,
 * capabilities at init).
 * Write buffers are the binding's own copies (a fresh Buffer per request), so handles may keep them.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { Fuse } from './binding.js';
import { Tree, MAX_WRITE } from './nodes.js';
import { operations } from './ops.js';
import { E } from './errno.js';
import { logger } from '../log.js';
import { mountDevice } from '../util/mountinfo.js';
import type { Registry } from '../disk/registry.js';

/** FUSE_CAP_ATOMIC_O_TRUNC (fuse_common.h). */
const CAP_ATOMIC_O_TRUNC = 1 << 3;
/** FUSE_CAP_AUTO_INVAL_DATA (fuse_common.h): libfuse asks for it by default; vdiskfs turns it off (see init). */
const CAP_AUTO_INVAL_DATA = 1 << 12;

/** The FUSE 3 connection offered at init (fuse-napi's initWithConfig). */
interface Connection {
  maxWrite: number;
  maxRead: number;
  maxReadahead: number;
  capable: number;
  want: number;
  maxBackground: number;
}

class VdiskFuse extends Fuse {
  constructor(mnt: string, ops: Record<string, (...a: never[]) => void>, opts: Record<string, unknown>, private extra: string[]) {
    super(mnt, ops as never, opts);
  }
  /** Options passed to libfuse as they are (the binding validates only its own option names). */
  override _fuseOptions(): string {
    const base = super._fuseOptions();
    const extra = this.extra.join(',');
    if (!extra) return base;
    return base ? `${base},${extra}` : `-o${extra}`;
  }
}

export interface MountOptions {
  mountpoint: string;
  /** Extra -o options (allow_other, ro, …) passed to libfuse as they are. */
  fuseOptions?: string[];
  /** Per-operation timeout, ms. Long control commands (restore, rollback) need minutes. */
  timeoutMs?: number;
  storeDir: string;
  /**
   * Kernel readahead for the mount in bytes (0: leave the kernel's 128 KiB). FUSE 3's init may only lower
   * the kernel's offer (128 KiB, the bdi default), so a larger window is set through sysfs once mounted.
   */
  readahead?: number;
  /** Requests the binding serves at once (its native worker threads); see README, Design. */
  maxConcurrency?: number;
}

/** Default readahead: lets the kernel send a sequential reader's readahead as 1 MiB requests. */
export const DEFAULT_READAHEAD = 1024 * 1024;
/**
 * Native request workers. Measured (README, Performance): more workers than this did not help on two
 * cores, and the JS side serves one request at a time anyway; the core's locks and gate keep any number
 * correct.
 */
export const DEFAULT_MAX_CONCURRENCY = 4;

/**
 * Set the read_ahead_kb of the mount's backing device (root only). With the kernel's default 128 KiB
 * window, FUSE sends a sequential reader's readahead as 128 KiB requests, one at a time; a larger window
 * lets it send bigger ones (up to max_read) and keep several in flight (README, Performance). Failure is not
 * fatal: reads stay correct, only slower.
 */
async function setReadahead(mountpoint: string, bytes: number): Promise<void> {
  const log = logger('fuse');
  try {
    const dev = mountDevice(await readFile('/proc/self/mountinfo', 'utf8'), mountpoint);
    if (!dev) throw new Error('mount not found in /proc/self/mountinfo');
    await writeFile(`/sys/class/bdi/${dev}/read_ahead_kb`, `${Math.round(bytes / 1024)}\n`);
    log.info({ mountpoint, readaheadKiB: Math.round(bytes / 1024) }, 'readahead set');
  } catch (e) {
    log.warn({ mountpoint, reason: (e as Error).message }, 'could not set the readahead (needs root); sequential reads stay at the kernel default');
  }
}

export interface Mounted {
  tree: Tree;
  /**
   * Stop taking requests and wait for those in flight: from now on every request but flush, fsync and
   * release (which let a writer's close complete) is answered ENOTCONN at once, as the kernel answers once
   * the mount is gone; resolves when no request is being served and every open file is closed, or
   * `graceMs` after that at most: a writer that got ENOTCONN closes its file at once, and its close still
   * succeeds (dd then prints what it wrote); one that holds its file open (a loop device) is not waited for.
   */
  drain(graceMs?: number): Promise<{ inFlight: number; open: number }>;
  /** Unmount (lazily: open descriptors then get ENOTCONN from the kernel) and wait for the last replies. */
  unmount(): Promise<void>;
}

/** How long a stopping mount waits for open files to be closed (Mounted.drain). */
export const DRAIN_GRACE_MS = 3000;

/** Served while stopping: a writer's close (flush, release) and fsync still complete. */
const SERVED_WHILE_STOPPING = new Set(['flush', 'fsync', 'release']);

/**
 * Counts the requests being served (called, not yet answered) and refuses new ones once draining. Wraps
 * each operation of the table handed to the binding; the last argument of every operation is its reply.
 */
export class Requests {
  private inFlight = 0;
  private draining = false;
  private waiters: (() => void)[] = [];

  wrap<T extends Record<string, unknown>>(ops: T): T {
    const out: Record<string, unknown> = {};
    for (const [name, fn] of Object.entries(ops)) {
      if (typeof fn !== 'function' || name === 'initWithConfig') {
        out[name] = fn;
        continue;
      }
      const served = SERVED_WHILE_STOPPING.has(name);
      out[name] = (...args: unknown[]) => {
        const reply = args[args.length - 1] as (...r: unknown[]) => void;
        if (this.draining && !served) return reply(E.ENOTCONN);
        this.inFlight++;
        let answered = false;
        args[args.length - 1] = (...r: unknown[]) => {
          if (!answered) {
            answered = true;
            if (--this.inFlight === 0) for (const w of this.waiters.splice(0)) w();
          }
          reply(...r);
        };
        (fn as (...a: unknown[]) => void)(...args);
      };
    }
    return out as T;
  }

  drain(): Promise<number> {
    this.draining = true;
    const n = this.inFlight;
    return this.idle().then(() => n);
  }

  /** Resolves when no request is being served. */
  idle(): Promise<void> {
    return this.inFlight === 0 ? Promise.resolve() : new Promise((res) => this.waiters.push(res));
  }
}

export async function mountTree(reg: Registry, tree: Tree, opts: MountOptions): Promise<Mounted> {
  const log = logger('fuse');
  const { ops, openFiles } = operations(reg, tree, opts.storeDir);

  // Mount options. attr_timeout=0: sizes change under control commands (resize, rendered status files);
  // reads and writes of data do not need fresh attributes, so this costs one getattr per stat/open only.
  // auto_cache: the kernel keeps a file's cached pages across opens while its mtime and size are unchanged
  // (libfuse compares them with a fresh getattr at every open); without it every open drops them, and with
  // O_DIRECT pool files nothing else caches a disk's data. Writes through the mount keep the kernel's pages
  // true by themselves; every other change to a file's contents changes its mtime with a strictly later
  // time (DiskState.changed, ChangeClock.tick). Rendered files are opened with direct_io (no page cache).
  // max_read (and max_write at init): 1 MiB requests where the kernel allows them (FUSE 3 negotiates up to
  // its max_pages, 1 MiB on Linux >= 4.20). big_writes is always on in FUSE 3.
  const extra = ['attr_timeout=0', 'entry_timeout=0', 'auto_cache', ...(opts.fuseOptions ?? [])];
  const readahead = opts.readahead ?? DEFAULT_READAHEAD;
  let conn: Connection | undefined;
  let readaheadAtInit = false;
  const fuseOps = {
    ...ops,
    // O_TRUNC arrives with open() (atomic_o_trunc), so `cat img > disk` opens a disk like a block device
    // (O_TRUNC ignored) while an explicit truncate(2) still gets its clear refusal.
    // auto_inval_data off: with it (and attr_timeout=0) the kernel sends a GETATTR before every read(2) and
    // drops the file's whole page cache whenever the mtime moved, which every write moves: a database that
    // writes a page and reads another lost its cache each time, and a cached 4 KiB read cost a round trip
    // (random 4K reads measured 0.5-0.7x of what they are without it). It is not needed for correctness:
    // writes through the mount keep the kernel's pages true, fallocate punches them in the kernel, and
    // every other change (rollback, restore, shrink) is refused while the disk is open and is then caught
    // by auto_cache at the next open (test/integration/cache.test.ts).
    initWithConfig(c: Connection, cb: (err: number, config?: Record<string, unknown>) => void) {
      conn = c;
      const maxWrite = Math.min(MAX_WRITE, c.maxWrite);
      tree.maxWrite = maxWrite;
      readaheadAtInit = readahead > 0 && readahead <= c.maxReadahead;
      cb(0, {
        maxWrite,
        want: ((c.want | (c.capable & CAP_ATOMIC_O_TRUNC)) & ~CAP_AUTO_INVAL_DATA) >>> 0,
        ...(readaheadAtInit ? { maxReadahead: readahead } : {}),
      });
    },
  };
  const requests = new Requests();
  const fuse = new VdiskFuse(
    opts.mountpoint,
    requests.wrap(fuseOps) as never,
    {
      timeout: opts.timeoutMs ?? 10 * 60 * 1000,
      force: true,
      // The mount's source (mount, findmnt, df): the store. libfuse cannot take a comma or backslash there.
      fsname: /[\0,\\\r\n]/.test(opts.storeDir) ? 'vdiskfs' : opts.storeDir,
      subtype: 'vdiskfs',
      maxRead: MAX_WRITE,
      maxConcurrency: opts.maxConcurrency ?? DEFAULT_MAX_CONCURRENCY,
      // Errors thrown inside an operation are already turned into EIO by the binding; log them here.
      onError: (e: unknown, op: string) => log.error({ op, err: e }, 'FUSE binding error'),
    },
    extra,
  );
  // A failed mount leaves nothing mounted (the binding mounts last, after libfuse accepted the options).
  // libfuse prints its own reason ("fuse: unknown option(s): …") on stderr; the error says what failed.
  await new Promise<void>((resolve, reject) =>
    fuse.mount((err) => {
      if (!err) return resolve();
      const why = err.message === 'Mountpoint in use' ? 'the mountpoint is in use (a mount point already)' : err.message;
      reject(new Error(`cannot mount ${opts.mountpoint}: ${why}${err.code ? ` (${err.code})` : ''}`, { cause: err }));
    }),
  );
  log.info({ mountpoint: opts.mountpoint, options: extra, maxWrite: tree.maxWrite, kernel: conn }, 'mounted');
  if (readahead > 0 && !readaheadAtInit) await setReadahead(opts.mountpoint, readahead);
  let unmounted = false;
  return {
    tree,
    drain: async (graceMs = DRAIN_GRACE_MS) => {
      const inFlight = await requests.drain();
      for (const end = Date.now() + graceMs; openFiles() > 0 && Date.now() < end; ) await new Promise((res) => setTimeout(res, 20));
      await requests.idle();
      return { inFlight, open: openFiles() };
    },
    unmount: async () => {
      if (unmounted) return;
      unmounted = true;
      await new Promise<void>((resolve) => fuse.unmount(() => resolve()));
      // The binding answers what was still pending with EIO as it unmounts; their work still finishes here
      // before the caller closes the store.
      await requests.idle();
    },
  };
}
