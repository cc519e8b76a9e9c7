/**
 * The only code that touches the FUSE binding (fuse-napi, FUSE 3.1 API): the operation table over the Tree,
 * handles, stat and statfs, errno mapping, fallocate and lseek, and mounting with the options we need
 * (1 MiB requests, subtype, timeouts, auto_cache). Write buffers are the binding's own copies (a fresh
 * Buffer per request), so handles may keep them.
 */
import Fuse from 'fuse-napi';
import { readFile, statfs as fsStatfs, writeFile } from 'node:fs/promises';
import { Tree, type Handle, type Node, MODES, MAX_WRITE } from './nodes.js';
import { E, toErrno } from './errno.js';
import { logger } from '../log.js';
import { mountDevice } from '../util/mountinfo.js';
import type { Registry } from '../disk/registry.js';

const O_ACCMODE = 3;
const O_RDONLY = 0;
/** lseek whence values the kernel passes on (SEEK_SET/CUR/END it answers itself). */
const SEEK_DATA = 3;
const SEEK_HOLE = 4;
/** fallocate mode bits (linux/falloc.h). */
export const FALLOC = { KEEP_SIZE: 0x01, PUNCH_HOLE: 0x02, COLLAPSE_RANGE: 0x08, ZERO_RANGE: 0x10, INSERT_RANGE: 0x20, UNSHARE_RANGE: 0x40 } as const;
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

/**
 * Reply buffers for readBuffer. The binding copies a reply's bytes out on the next tick after the callback
 * (its reply is queued with process.nextTick), so a buffer handed back goes to the free list only at the
 * next setImmediate, after that copy; until then no other request can be given it.
 */
export class ReplyBuffers {
  private free: Buffer[] = [];
  constructor(private readonly size: number, private readonly keep = 16) {}

  take(len: number): Buffer {
    if (len > this.size) return Buffer.allocUnsafe(len);
    return (this.free.pop() ?? Buffer.allocUnsafeSlow(this.size)).subarray(0, len);
  }

  give(buf: Buffer): void {
    if (buf.buffer.byteLength !== this.size || buf.byteOffset !== 0) return; // one of take's own allocations only
    const whole = Buffer.from(buf.buffer, 0, this.size);
    setImmediate(() => {
      if (this.free.length < this.keep) this.free.push(whole);
    });
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
  const handles = new Map<number, Handle>();
  const replies = new ReplyBuffers(MAX_WRITE);
  let nextFd = 10;
  const uid = process.getuid?.() ?? 0;
  const gid = process.getgid?.() ?? 0;

  const fail = (op: string, path: string, e: unknown, extra: Record<string, unknown> = {}): number => {
    const errno = toErrno(e);
    if (errno === E.EIO) log.error({ op, path, ...extra, err: e }, `unexpected error in ${op}`);
    else log.info({ op, path, ...extra, reason: (e as Error).message }, `${op} refused`);
    return errno;
  };

  const statOf = async (node: Node) => {
    if (node.kind === 'dir') {
      const now = new Date();
      return { mode: MODES.DIR, size: 4096, blocks: 8, mtime: now, atime: now, ctime: now, nlink: 2, uid, gid };
    }
    const st = await node.stat();
    return { ...st, atime: st.mtime, ctime: st.mtime, nlink: 1, uid, gid };
  };

  const ops = {
    getattr(path: string, cb: (err: number, st?: unknown) => void) {
      const node = tree.lookup(path);
      if (!node) return cb(E.ENOENT);
      statOf(node).then((st) => cb(0, st), (e) => cb(fail('getattr', path, e)));
    },
    // fstat of an open file: a rendered file reports the size of the rendering this descriptor reads.
    fgetattr(path: string, fd: number, cb: (err: number, st?: unknown) => void) {
      const size = handles.get(fd)?.size?.();
      if (size === undefined) return ops.getattr(path, cb);
      const node = tree.lookup(path);
      if (!node) return cb(E.ENOENT);
      statOf(node).then((st) => cb(0, { ...st, size }), (e) => cb(fail('getattr', path, e)));
    },
    readdir(path: string, cb: (err: number, names?: string[]) => void) {
      const node = tree.lookup(path);
      if (!node) return cb(E.ENOENT);
      if (node.kind !== 'dir') return cb(E.ENOTDIR);
      cb(0, node.list());
    },
    open(path: string, flags: number, cb: (err: number, fd?: number | { fd: number; directIO: boolean }) => void) {
      const node = tree.lookup(path);
      if (!node) return cb(E.ENOENT);
      if (node.kind === 'dir') return cb(E.EISDIR);
      node.open((flags & O_ACCMODE) !== O_RDONLY).then(
        (h) => {
          const fd = nextFd++;
          handles.set(fd, h);
          // direct_io: the kernel neither caches this descriptor's pages nor cuts its reads at a size it
          // learned from another stat (rendered files: each open reads its own rendering).
          cb(0, h.directIO ? { fd, directIO: true } : fd);
        },
        (e) => cb(fail('open', path, e)),
      );
    },
    create(path: string, _mode: number, cb: (err: number, fd?: number | { fd: number; directIO: boolean }) => void) {
      const node = tree.lookup(path);
      if (!node) {
        log.info({ op: 'create', path }, 'create refused: use the control file to create disks');
        return cb(E.EACCES);
      }
      ops.open(path, 1, cb);
    },
    release(path: string, fd: number, cb: (err: number) => void) {
      const h = handles.get(fd);
      handles.delete(fd);
      if (!h?.release) return cb(0);
      h.release().then(() => cb(0), (e) => cb(fail('release', path, e)));
    },
    // FUSE read_buf: we hand the binding a Buffer of ours, which it copies once into the reply. With plain
    // `read` the binding would allocate a fresh Buffer per request (1 MiB of external memory each, whose
    // collection made V8's incremental marking the largest single cost of a cold sequential read) and
    // copy it a second time; here the reply comes from a few reused buffers (ReplyBuffers).
    readBuffer(path: string, fd: number, len: number, pos: number, cb: (err: number, buf?: Buffer) => void) {
      const h = handles.get(fd);
      if (!h?.read) return cb(E.EBADF);
      const dst = replies.take(len);
      const failed = (e: unknown) => {
        replies.give(dst);
        cb(fail('read', path, e, { offset: pos, length: len }));
      };
      const reply = (n: number) => {
        cb(0, dst.subarray(0, n));
        replies.give(dst);
      };
      try {
        const n = h.readNow?.(dst, pos);
        if (n !== undefined) return reply(n);
      } catch (e) {
        return failed(e);
      }
      h.read(dst, pos).then(reply, failed);
    },
    write(path: string, fd: number, buf: Buffer, len: number, pos: number, cb: (n: number) => void) {
      const h = handles.get(fd);
      if (!h?.write) return cb(E.EBADF);
      const failed = (e: unknown) => cb(fail('write', path, e, { offset: pos, length: len }));
      try {
        let work: (() => void) | undefined;
        const n = h.writeNow?.(buf.subarray(0, len), pos, (w) => (work = w));
        if (n !== undefined) {
          cb(n); // the binding sends the reply on the next tick: queue the rest of the write after it
          if (work) process.nextTick(work);
          return;
        }
      } catch (e) {
        return failed(e);
      }
      // The binding hands every write its own fresh Buffer: no copy needed, whatever the handle keeps.
      h.write(buf.subarray(0, len), pos).then(cb, failed);
    },
    truncate(path: string, size: number, cb: (err: number) => void) {
      const node = tree.lookup(path);
      if (!node) return cb(E.ENOENT);
      if (node.kind === 'dir') return cb(E.EISDIR);
      if (!node.truncate) return cb(E.EACCES);
      node.truncate(size).then(() => cb(0), (e) => cb(fail('truncate', path, e, { size })));
    },
    ftruncate(path: string, fd: number, size: number, cb: (err: number) => void) {
      const h = handles.get(fd);
      if (!h?.truncate) return ops.truncate(path, size, cb);
      h.truncate(size).then(() => cb(0), (e) => cb(fail('ftruncate', path, e, { size })));
    },
    fsync(path: string, _datasync: boolean, fd: number, cb: (err: number) => void) {
      const h = handles.get(fd);
      try {
        if (h?.fsyncNow?.()) return cb(0);
      } catch (e) {
        return cb(fail('fsync', path, e));
      }
      const p = h?.fsync ? h.fsync() : reg.sync();
      p.then(() => cb(0), (e) => cb(fail('fsync', path, e)));
    },
    flush(path: string, fd: number, cb: (err: number) => void) {
      const h = handles.get(fd);
      if (!h?.flush) return cb(0);
      h.flush().then(() => cb(0), (e) => cb(fail('flush', path, e)));
    },
    statfs(_path: string, cb: (err: number, st?: unknown) => void) {
      const frsize = 1024 * 1024;
      const used = reg.ctx.pool.usedBytes();
      const capacity = reg.ctx.pool.capacity;
      const done = (total: number, avail: number) =>
        cb(0, {
          bsize: frsize,
          frsize,
          blocks: Math.min(0xffffffff, Math.ceil(total / frsize)),
          bfree: Math.min(0xffffffff, Math.floor(avail / frsize)),
          bavail: Math.min(0xffffffff, Math.floor(avail / frsize)),
          files: reg.names().length + 100,
          ffree: 100,
          favail: 100,
          fsid: 0,
          flag: 0,
          namemax: 255,
        });
      if (Number.isFinite(capacity)) return done(capacity, Math.max(0, capacity - used));
      // Unlimited pool: the pool can grow into the free space of the store's filesystem.
      fsStatfs(opts.storeDir).then(
        (s) => {
          const avail = s.bavail * s.bsize;
          done(used + avail, avail);
        },
        () => done(used, 0),
      );
    },
    // Only disks take fallocate, and only to discard (PUNCH_HOLE|KEEP_SIZE, ZERO_RANGE[|KEEP_SIZE]): see
    // Handle.discard. Preallocation, collapse, insert and unshare have no meaning on a thin disk.
    fallocate(path: string, fd: number, mode: number, offset: number, length: number, cb: (err: number) => void) {
      const h = handles.get(fd);
      if (!h) return cb(E.EBADF);
      if (!h.discard) return cb(h.readOnly ? E.EROFS : E.EOPNOTSUPP);
      const m = mode & ~FALLOC.KEEP_SIZE;
      const punch = m === FALLOC.PUNCH_HOLE && (mode & FALLOC.KEEP_SIZE) !== 0;
      if (!punch && m !== FALLOC.ZERO_RANGE) return cb(E.EOPNOTSUPP);
      h.discard(offset, length, (mode & FALLOC.KEEP_SIZE) !== 0).then(() => cb(0), (e) => cb(fail('fallocate', path, e, { mode, offset, length })));
    },
    // SEEK_DATA / SEEK_HOLE (the kernel answers SEEK_SET/CUR/END itself). Files without a map of their own
    // answer like any file without holes: data up to the end, one hole at the end. ENOSYS is no option: the
    // kernel would then stop asking for the whole mount.
    lseek(path: string, fd: number, offset: number, whence: number, cb: (err: number, offset?: number) => void) {
      if (whence !== SEEK_DATA && whence !== SEEK_HOLE) return cb(E.EINVAL);
      if (!Number.isSafeInteger(offset) || offset < 0) return cb(E.ENXIO);
      const h = handles.get(fd);
      if (!h) return cb(E.EBADF);
      const answer = (r: number | null) => (r === null ? cb(E.ENXIO) : cb(0, r));
      if (h.seek) return void h.seek(offset, whence === SEEK_DATA ? 'data' : 'hole').then(answer, (e) => cb(fail('lseek', path, e, { offset, whence })));
      const node = tree.lookup(path);
      if (!node || node.kind !== 'file') return cb(E.ENOENT);
      Promise.resolve(h.size?.() ?? node.stat()).then(
        (st) => {
          const size = typeof st === 'number' ? st : st.size;
          answer(offset >= size ? null : whence === SEEK_DATA ? offset : size);
        },
        (e) => cb(fail('lseek', path, e, { offset, whence })),
      );
    },
    unlink(path: string, cb: (err: number) => void) {
      cb(tree.lookup(path) ? E.EPERM : E.ENOENT);
    },
    mkdir(_path: string, _mode: number, cb: (err: number) => void) {
      cb(E.EACCES);
    },
    rmdir(path: string, cb: (err: number) => void) {
      cb(tree.lookup(path) ? E.EPERM : E.ENOENT);
    },
    rename(_src: string, _dst: string, cb: (err: number) => void) {
      cb(E.EPERM);
    },
    chmod(_p: string, _m: number, cb: (err: number) => void) {
      cb(0);
    },
    chown(_p: string, _u: number, _g: number, cb: (err: number) => void) {
      cb(0);
    },
    utimens(_p: string, _a: unknown, _m: unknown, cb: (err: number) => void) {
      cb(0);
    },
  };

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
      for (const end = Date.now() + graceMs; handles.size > 0 && Date.now() < end; ) await new Promise((res) => setTimeout(res, 20));
      await requests.idle();
      return { inFlight, open: handles.size };
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
