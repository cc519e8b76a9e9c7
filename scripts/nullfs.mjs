#!/usr/bin/env node
// Null FUSE filesystem: the throughput ceiling for any Node filesystem built on fuse-napi (FUSE 3).
//
//   node scripts/nullfs.mjs MOUNTPOINT SIZE_BYTES [BACKING_FILE]
//
// Serves one regular file, /null, of SIZE_BYTES bytes. Writes are accepted and discarded, reads return
// zeros, so the figures measure only the kernel <-> libfuse <-> N-API <-> JS round trip. Mount options
// are the ones vdiskfs uses (see FastFuse below). Prints "ready" on stdout once mounted; unmounts
// on SIGINT/SIGTERM (and SIGHUP).
//
// With BACKING_FILE it is a *passthrough*: /null's bytes are that file's (made SIZE_BYTES long), every read
// and write goes to it with O_DIRECT and is answered once done, with no tables, caches or checksums: the
// least a FUSE filesystem that keeps its data on this disk must do per request. Requests of up to 128 KiB
// run synchronously on the event loop (as vdiskfs's fast path reads), larger ones on libuv's thread pool,
// so that the kernel's readahead keeps several in flight. fsync is fdatasync of the file.
//
// This process serves the mount: it must never block its event loop on I/O to the mount itself
// (no execSync/spawnSync here), or the kernel request and the JS thread wait for each other.
// The binding as vdiskfs loads it (src/fuse/binding.ts: without its per-request AsyncLocalStorage).
import { Fuse } from '../dist/fuse/binding.js'
import { constants, fdatasync, ftruncateSync, openSync, read as fsRead, readSync, write as fsWrite, writeSync } from 'node:fs'
import { readFile, writeFile } from 'node:fs/promises'
import process from 'node:process'

const [mountpoint, sizeArg, backingPath] = process.argv.slice(2)
if (!mountpoint || !sizeArg || !/^\d+$/.test(sizeArg)) {
  process.stderr.write('usage: node scripts/nullfs.mjs MOUNTPOINT SIZE_BYTES [BACKING_FILE]\n')
  process.exit(2)
}
let size = Number(sizeArg)

// Kept in step with src/fuse/mount.ts (libfuse options passed as they are, 1 MiB max_read/max_write, the
// same number of native request workers), so that the bench's ratios compare like with like.
export const EXTRA_MOUNT_OPTIONS = ['attr_timeout=0', 'entry_timeout=0', 'auto_cache']
const MAX_IO = 1024 * 1024
const MAX_CONCURRENCY = Number(process.env.VDISKFS_FUSE_WORKERS ?? 4) // as vdiskfs: same variable

// ---- passthrough (BACKING_FILE) -------------------------------------------------------------------
const SECTOR = 4096 // O_DIRECT transfers: offsets, lengths and memory on this boundary
const SYNC_MAX = 128 * 1024
/** The backing file, with O_DIRECT where its filesystem takes it (else through the page cache, said on stderr). */
function openBacking (file) {
  try {
    return openSync(file, constants.O_RDWR | constants.O_CREAT | constants.O_DIRECT, 0o644)
  } catch (e) {
    if (e.code !== 'EINVAL') throw e
    process.stderr.write(`nullfs: ${file}: no O_DIRECT on its filesystem, passing through the page cache\n`)
    return openSync(file, constants.O_RDWR | constants.O_CREAT, 0o644)
  }
}
const backing = backingPath ? openBacking(backingPath) : -1
if (backing >= 0) ftruncateSync(backing, size)
/**
 * Page-aligned bounce buffers for O_DIRECT, one per request in flight: a WebAssembly.Memory's buffer starts on
 * a page boundary (src/util/memory.ts explains why vdiskfs uses the same). A reply's buffer is given back
 * after the binding has copied it (it does so on the next tick after the callback).
 */
const BOUNCE = MAX_IO + 2 * SECTOR
const spare = []
const takeBounce = () => spare.pop() ?? Buffer.from(new WebAssembly.Memory({ initial: Math.ceil(BOUNCE / 65536), maximum: Math.ceil(BOUNCE / 65536) }).buffer, 0, BOUNCE)
const giveBounce = (b) => setImmediate(() => spare.push(b))
const span = (pos, len) => {
  const from = Math.floor(pos / SECTOR) * SECTOR
  return { from, bytes: Math.ceil((pos + len) / SECTOR) * SECTOR - from }
}
/**
 * Read or write (`write`) `bytes` at `from` (sector-aligned) between b and the backing file; cb(err).
 * Synchronous for small requests.
 */
function passIo (write, b, from, bytes, cb) {
  if (bytes > SYNC_MAX) return (write ? fsWrite : fsRead)(backing, b, 0, bytes, from, (e) => cb(e))
  try {
    (write ? writeSync : readSync)(backing, b, 0, bytes, from)
  } catch (e) {
    return cb(e)
  }
  cb(null)
}

class FastFuse extends Fuse {
  _fuseOptions () {
    const base = super._fuseOptions()
    const extra = EXTRA_MOUNT_OPTIONS.join(',')
    return base ? `${base},${extra}` : `-o${extra}`
  }
}

const now = new Date()
const uid = process.getuid ? process.getuid() : 0
const gid = process.getgid ? process.getgid() : 0
const dirStat = () => ({ mode: 0o040755, size: 4096, nlink: 2, uid, gid, mtime: now, atime: now, ctime: now })
const fileStat = () => ({
  mode: 0o100644, size, nlink: 1, uid, gid, blksize: 4096, blocks: 0, mtime: now, atime: now, ctime: now
})

// Request counts, printed to stderr at exit with NULLFS_STATS=1 (shows the request size the kernel uses).
const ZEROS = Buffer.alloc(MAX_IO) // never written: every read's reply

const stats = { reads: 0, readBytes: 0, writes: 0, writeBytes: 0 }
function printStats () {
  if (process.env.NULLFS_STATS !== '1') return
  const avg = (bytes, n) => (n ? Math.round(bytes / n) : 0)
  process.stderr.write(`nullfs: ${stats.writes} writes (avg ${avg(stats.writeBytes, stats.writes)} B), ` +
    `${stats.reads} reads (avg ${avg(stats.readBytes, stats.reads)} B)\n`)
}

const ops = {
  getattr (path, cb) {
    if (path === '/') return cb(0, dirStat())
    if (path === '/null') return cb(0, fileStat())
    return cb(Fuse.ENOENT)
  },
  readdir (path, cb) {
    if (path !== '/') return cb(Fuse.ENOTDIR)
    return cb(0, ['null'], [fileStat()])
  },
  open (path, flags, cb) {
    if (path !== '/null') return cb(Fuse.ENOENT)
    return cb(0, 42)
  },
  release (path, fd, cb) { cb(0) },
  // read_buf, as vdiskfs reads (src/fuse/mount.ts): the reply is a Buffer of ours that the binding copies once.
  readBuffer (path, fd, len, pos, cb) {
    const n = Math.max(0, Math.min(len, size - pos))
    stats.reads++
    stats.readBytes += n
    if (backing < 0 || n === 0) return cb(0, ZEROS.subarray(0, n))
    const { from, bytes } = span(pos, n)
    const b = takeBounce()
    passIo(false, b, from, bytes, (e) => {
      if (e) cb(Fuse.EIO)
      else cb(0, b.subarray(pos - from, pos - from + n))
      giveBounce(b)
    })
  },
  write (path, fd, buf, len, pos, cb) {
    stats.writes++
    stats.writeBytes += len
    if (backing < 0) return cb(len)
    if (pos + len > size) return cb(Fuse.EFBIG)
    const { from, bytes } = span(pos, len)
    const b = takeBounce()
    const done = (e) => {
      cb(e ? Fuse.EIO : len)
      giveBounce(b)
    }
    const fill = () => {
      buf.copy(b, pos - from, 0, len)
      passIo(true, b, from, bytes, done)
    }
    // A write that does not cover whole sectors keeps the rest of them: read them first. (The kernel sends
    // one file's buffered writes one at a time, under the inode's lock: no two of these overlap.)
    if (from === pos && bytes === len) fill()
    else passIo(false, b, from, bytes, (e) => (e ? done(e) : fill()))
  },
  truncate (path, newSize, cb) {
    if (path !== '/null') return cb(Fuse.ENOENT)
    size = newSize
    if (backing >= 0) ftruncateSync(backing, size)
    return cb(0)
  },
  ftruncate (path, fd, newSize, cb) {
    size = newSize
    if (backing >= 0) ftruncateSync(backing, size)
    return cb(0)
  },
  fsync (path, datasync, fd, cb) {
    if (backing < 0) return cb(0)
    fdatasync(backing, (e) => cb(e ? Fuse.EIO : 0))
  },
  flush (path, fd, cb) { cb(0) },
  utimens (path, atime, mtime, cb) { cb(0) },
  chmod (path, mode, cb) { cb(0) },
  // As vdiskfs (src/fuse/mount.ts): auto_inval_data off, so a read is not preceded by a GETATTR.
  initWithConfig (conn, cb) {
    cb(0, { maxWrite: Math.min(MAX_IO, conn.maxWrite), want: (conn.want & ~(1 << 12)) >>> 0 })
  },
  lseek (path, fd, offset, whence, cb) {
    if (offset >= size) return cb(Fuse.ENXIO)
    return cb(0, whence === 3 ? offset : size)
  },
  statfs (path, cb) {
    const bsize = 4096
    const blocks = Math.ceil(size / bsize)
    return cb(0, {
      bsize, frsize: bsize, blocks, bfree: blocks, bavail: blocks,
      files: 1, ffree: 0, favail: 0, fsid: 0, flag: 0, namemax: 255
    })
  }
}

const fuse = new FastFuse(mountpoint, ops, {
  timeout: 30_000, // per-op watchdog (the binding's default is 15 s): a slow op fails with ETIMEDOUT, not a hang
  maxRead: MAX_IO,
  maxConcurrency: MAX_CONCURRENCY,
  force: true, // unmount a stale mount left on this mountpoint by a crashed run
  mkdir: true,
  fsname: 'nullfs',
  subtype: 'nullfs'
})

let closing = false
function shutdown (code) {
  if (closing) return
  closing = true
  fuse.unmount((err) => {
    if (err) process.stderr.write(`nullfs: unmount failed: ${err.message}\n`)
    printStats()
    process.exit(err ? 1 : code)
  })
  setTimeout(() => process.exit(1), 10_000).unref()
}
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) process.on(sig, () => shutdown(0))

// Kernel readahead of the mount, as vdiskfs sets it (src/fuse/mount.ts, default 1 MiB; NULLFS_READAHEAD_KB=0
// keeps the kernel's 128 KiB): with the default window only one 128 KiB read request is in flight at a time.
const READAHEAD_KB = Number(process.env.NULLFS_READAHEAD_KB ?? 1024)
async function setReadahead () {
  const lines = (await readFile('/proc/self/mountinfo', 'utf8')).split('\n').map((l) => l.split(' '))
  const dev = lines.filter((f) => f[4] === mountpoint).pop()?.[2]
  if (!dev) throw new Error(`${mountpoint} not in /proc/self/mountinfo`)
  await writeFile(`/sys/class/bdi/${dev}/read_ahead_kb`, `${READAHEAD_KB}\n`)
}

fuse.mount(async (err) => {
  if (err) {
    process.stderr.write(`nullfs: mount failed: ${err.message}\n`)
    process.exit(1)
  }
  if (READAHEAD_KB > 0) await setReadahead().catch((e) => process.stderr.write(`nullfs: readahead not set: ${e.message}\n`))
  process.stdout.write('ready\n')
  // The binding does not hold the event loop open: without this the process would exit while mounted.
  setInterval(() => {}, 1 << 30)
})
