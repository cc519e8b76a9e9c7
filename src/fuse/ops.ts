/**
 * The FUSE operation table over the Tree: handles, stat and statfs, reads through reused reply buffers,
 * writes and fsync forwarding the disk interface's now-or-promise answers, fallocate and lseek, and errno
 * mapping (errno.ts). mount.ts mounts it.
 */
import { statfs as fsStatfs } from 'node:fs/promises';
import { type Handle, type Node, type Tree, MODES, MAX_WRITE } from './nodes.js';
import { E, toErrno } from './errno.js';
import { logger } from '../log.js';
import type { Registry } from '../disk/registry.js';

const O_ACCMODE = 3;
const O_RDONLY = 0;
/** lseek whence values the kernel passes on (SEEK_SET/CUR/END it answers itself). */
const SEEK_DATA = 3;
const SEEK_HOLE = 4;
/** fallocate mode bits (linux/falloc.h). */
export const FALLOC = { KEEP_SIZE: 0x01, PUNCH_HOLE: 0x02, COLLAPSE_RANGE: 0x08, ZERO_RANGE: 0x10, INSERT_RANGE: 0x20, UNSHARE_RANGE: 0x40 } as const;

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

/**
 * The operations the binding calls (`storeDir` answers statfs for a pool without a size limit), and how
 * many files are open (a stopping mount waits for them: mount.ts).
 */
export function operations(reg: Registry, tree: Tree, storeDir: string) {
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
        const n = h.read(dst, pos);
        if (typeof n === 'number') return reply(n);
        n.then(reply, failed);
      } catch (e) {
        failed(e);
      }
    },
    write(path: string, fd: number, buf: Buffer, len: number, pos: number, cb: (n: number) => void) {
      const h = handles.get(fd);
      if (!h?.write) return cb(E.EBADF);
      const failed = (e: unknown) => cb(fail('write', path, e, { offset: pos, length: len }));
      try {
        // The binding hands every write its own fresh Buffer: the handle may keep it, no copy needed.
        let work: (() => void) | undefined;
        const n = h.write(buf.subarray(0, len), pos, (w) => (work = w));
        if (typeof n !== 'number') return void n.then(cb, failed);
        cb(n); // the binding sends the reply on the next tick: queue the rest of the write after it
        if (work) process.nextTick(work);
      } catch (e) {
        failed(e);
      }
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
        const p = h?.fsync ? h.fsync() : reg.sync();
        if (!p) return cb(0);
        p.then(() => cb(0), (e) => cb(fail('fsync', path, e)));
      } catch (e) {
        cb(fail('fsync', path, e));
      }
    },
    flush(path: string, fd: number, cb: (err: number) => void) {
      const h = handles.get(fd);
      if (!h?.flush) return cb(0);
      h.flush().then(() => cb(0), (e) => cb(fail('flush', path, e)));
    },
    statfs(_path: string, cb: (err: number, st?: unknown) => void) {
      const frsize = 1024 * 1024;
      const { usedBytes: used, capacity } = reg.poolUsage();
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
      fsStatfs(storeDir).then(
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
  return { ops, openFiles: () => handles.size };
}
