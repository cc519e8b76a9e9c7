/**
 * The only code that touches fuse-native: the operation table over the Tree, handles, stat and statfs,
 * errno mapping, and mounting with the options we need (big_writes, max_write, subtype) that fuse-native
 * has no switch for. Write buffers are copied before any await unless the handle finishes with them before
 * the reply (see Handle.usesBufferOnlyUntilReply).
 */
import Fuse from 'fuse-native';
import { readFile, statfs as fsStatfs, writeFile } from 'node:fs/promises';
import { Tree, type Handle, type Node, MODES, MAX_WRITE } from './nodes.js';
import { E, toErrno } from './errno.js';
import { logger } from '../log.js';
import { mountDevice } from '../util/mountinfo.js';
import type { Registry } from '../disk/registry.js';

const O_ACCMODE = 3;
const O_RDONLY = 0;

class VdiskFuse extends Fuse {
  constructor(mnt: string, ops: Record<string, (...a: never[]) => void>, opts: Record<string, unknown>, private extra: string[]) {
    super(mnt, ops as never, opts);
  }
  override _fuseOptions(): string {
    const base = super._fuseOptions();
    const extra = this.extra.join(',');
    if (!extra) return base;
    return base ? `${base},${extra}` : `-o${extra}`;
  }
}

export interface MountOptions {
  mountpoint: string;
  /** Extra -o options (allow_other, ro, …) passed to FUSE as they are. */
  fuseOptions?: string[];
  /** Per-operation timeout, ms. Long control commands (restore, rollback) need minutes. */
  timeoutMs?: number;
  storeDir: string;
  /**
   * Kernel readahead for the mount in bytes (0: leave the kernel's 128 KiB). fuse-native has no switch for it,
   * and libfuse 2 negotiates at most the kernel's default; it is set through sysfs once mounted.
   */
  readahead?: number;
}

/** Default readahead: lets the kernel keep eight 128 KiB read requests in flight for a sequential reader. */
export const DEFAULT_READAHEAD = 1024 * 1024;

/**
 * Set the read_ahead_kb of the mount's backing device (root only). FUSE sends a sequential reader's
 * readahead as 128 KiB requests, and with the kernel's default window only one is in flight at a time, so
 * every request waits for the previous round trip; a larger window keeps several in flight (README,
 * Performance). Failure is not fatal: reads stay correct, only slower.
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
  unmount(): Promise<void>;
}

export async function mountTree(reg: Registry, tree: Tree, opts: MountOptions): Promise<Mounted> {
  const log = logger('fuse');
  const handles = new Map<number, Handle>();
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
    fgetattr(path: string, _fd: number, cb: (err: number, st?: unknown) => void) {
      ops.getattr(path, cb);
    },
    readdir(path: string, cb: (err: number, names?: string[]) => void) {
      const node = tree.lookup(path);
      if (!node) return cb(E.ENOENT);
      if (node.kind !== 'dir') return cb(E.ENOTDIR);
      cb(0, node.list());
    },
    open(path: string, flags: number, cb: (err: number, fd?: number) => void) {
      const node = tree.lookup(path);
      if (!node) return cb(E.ENOENT);
      if (node.kind === 'dir') return cb(E.EISDIR);
      node.open((flags & O_ACCMODE) !== O_RDONLY).then(
        (h) => {
          const fd = nextFd++;
          handles.set(fd, h);
          cb(0, fd);
        },
        (e) => cb(fail('open', path, e)),
      );
    },
    create(path: string, _mode: number, cb: (err: number, fd?: number) => void) {
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
    read(path: string, fd: number, buf: Buffer, len: number, pos: number, cb: (n: number) => void) {
      const h = handles.get(fd);
      if (!h?.read) return cb(E.EBADF);
      const dst = buf.subarray(0, len);
      const failed = (e: unknown) => cb(fail('read', path, e, { offset: pos, length: len }));
      try {
        const n = h.readNow?.(dst, pos);
        if (n !== undefined) return cb(n);
      } catch (e) {
        return failed(e);
      }
      h.read(dst, pos).then(cb, failed);
    },
    write(path: string, fd: number, buf: Buffer, len: number, pos: number, cb: (n: number) => void) {
      const h = handles.get(fd);
      if (!h?.write) return cb(E.EBADF);
      const failed = (e: unknown) => cb(fail('write', path, e, { offset: pos, length: len }));
      try {
        let work: (() => void) | undefined;
        const n = h.writeNow?.(buf.subarray(0, len), pos, (w) => (work = w));
        if (n !== undefined) {
          cb(n); // fuse-native sends the reply on the next tick: queue the rest of the write after it
          if (work) process.nextTick(work);
          return;
        }
      } catch (e) {
        return failed(e);
      }
      // fuse-native reuses buf after we reply: copy it unless the handle is done with it by then.
      const data = h.usesBufferOnlyUntilReply ? buf.subarray(0, len) : Buffer.from(buf.subarray(0, len));
      h.write(data, pos).then(cb, failed);
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

  // attr_timeout=0: sizes change under control commands (resize, rendered status files); reads and writes
  // of data do not need fresh attributes, so this costs one getattr per stat/open only.
  // atomic_o_trunc: O_TRUNC arrives with open() instead of as a truncate, so `cat img > disk` opens a disk
  // like a block device (O_TRUNC ignored) while an explicit truncate(2) still gets its clear refusal.
  // auto_cache: the kernel keeps a file's cached pages across opens while its mtime and size are unchanged
  // (libfuse compares them with a fresh getattr at every open); without it every open drops them, and with
  // O_DIRECT pool files nothing else caches a disk's data. Writes through the mount keep the kernel's pages
  // true by themselves; every other change to a file's contents changes its mtime with a strictly later
  // time (DiskState.changed, ChangeClock.tick), and files rendered anew report a new mtime at every stat.
  const extra = ['big_writes', `max_write=${MAX_WRITE}`, 'subtype=vdiskfs', 'fsname=vdiskfs', 'attr_timeout=0', 'entry_timeout=0', 'atomic_o_trunc', 'auto_cache', ...(opts.fuseOptions ?? [])];
  const fuse = new VdiskFuse(opts.mountpoint, ops as never, { timeout: opts.timeoutMs ?? 10 * 60 * 1000, force: true }, extra);
  await new Promise<void>((resolve, reject) => fuse.mount((err) => (err ? reject(err) : resolve())));
  log.info({ mountpoint: opts.mountpoint, options: extra }, 'mounted');
  const readahead = opts.readahead ?? DEFAULT_READAHEAD;
  if (readahead > 0) await setReadahead(opts.mountpoint, readahead);
  let unmounted = false;
  return {
    tree,
    unmount: async () => {
      if (unmounted) return;
      unmounted = true;
      await new Promise<void>((resolve) => fuse.unmount(() => resolve()));
    },
  };
}
