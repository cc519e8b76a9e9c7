/**
 * Block data in `pool-<blockSize>.dat` (pbn at byte pbn × blockSize, the same file format as poolFile.ts),
 * read and written with O_DIRECT: the pool never goes through the page cache. Why: the disk file a user
 * writes is already cached once by the kernel on the FUSE side; caching its blocks a second time in the
 * pool file's page cache doubles the memory every byte written takes, and fresh page-cache pages were the
 * largest single cost of a sustained write on the benchmark machine (a 128 KiB buffered pwrite from Node
 * reached 301–341 MB/s, the same data with O_DIRECT 870 MB/s, and in 1 MiB pieces 1.9 GB/s; README,
 * Performance). Stores whose filesystem refuses O_DIRECT (tmpfs) use poolFile.ts instead (bottoms.ts).
 *
 * O_DIRECT needs file offsets, lengths and memory aligned to the device's sector: every I/O goes through
 * buffers carved from one arena whose aligned start is found once by probing (Node cannot ask for an
 * address). Reads and writes that do not cover whole sectors read the enclosing sectors first.
 *
 * Writes are written behind, in *runs*: a run is a 1 MiB staging buffer that collects the data of many
 * writes (copied at once, so the caller may reuse its buffer) and writes each contiguous stretch with one
 * pwrite on the thread pool, after at most FLUSH_MS or when it is full, awaited, or must be ordered before
 * a later write. Rules that keep this exact:
 * - every write to one pbn lands in issue order: a run (or a read-modify-write) that touches a pbn waits for
 *   the write to that pbn issued before it (a per-pbn chain of promises); inside one run no two stretches
 *   overlap (a write contained in a staged stretch patches it in place; any other overlap closes the run);
 * - anything that must come after the open run (a read of one of its pbns, a read-modify-write of one,
 *   sync) submits the run first, so the open run never waits for something that waits for it;
 * - a pbn with a write staged or in flight is never read from the file: read() waits for its chain and the
 *   synchronous path asks busy() first;
 * - the table batch that references a new block waits for the block's write (disk/io.ts), so a crash never
 *   leaves an entry pointing at unwritten data;
 * - a failed write fails every later sync() and ends write-behind (like a disk whose cache lost data).
 * Readahead is a layer over this store (readahead.ts, assembled in bottoms.ts): it reads chunks with
 * readRun into memory from allocAligned.
 */
import { open, unlink, type FileHandle } from 'node:fs/promises';
import { constants, fdatasyncSync, readSync, writeSync, read as readCb, write as writeCb } from 'node:fs';
import type { BlockStore } from './blockStore.js';
import { trimFile } from './poolFile.js';

const SECTOR = 512;
const RUN_BYTES = 1024 * 1024;
const RUNS = 8;
const FLUSH_MS = 1;
const PARALLEL_SLOTS = 4;
/** Block copies (copyBehind) in flight at most before the fast path declines (64 KiB blocks: 4 MiB). */
const COPIES_AHEAD = 64;
const PROBE_BYTES = 64 * 1024;

const floorTo = (n: number, a: number): number => Math.floor(n / a) * a;
const ceilTo = (n: number, a: number): number => Math.ceil(n / a) * a;
const aligned = (pos: number, len: number): boolean => pos % SECTOR === 0 && len % SECTOR === 0;

/** A stretch of a run: file bytes [pos, pos+len) staged at buf[mem, mem+len). */
interface Stretch {
  pos: number;
  len: number;
  mem: number;
}

interface Run {
  buf: Buffer;
  used: number;
  stretches: Stretch[];
  /** pbn -> the stretches that touch it. */
  byPbn: Map<number, Stretch[]>;
  /** Writes issued before this run to pbns it touches. */
  deps: Set<Promise<void>>;
  done: Promise<void>;
  resolve: () => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout | null;
}

/** Blocking-free O_DIRECT write or read of a whole buffer at pos (short reads past the end are zero-filled). */
function ioAll(kind: 'read' | 'write', fd: number, buf: Buffer, pos: number): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const step = (done: number): void => {
      if (done >= buf.length) return resolve();
      const cb = (err: Error | null, n: number): void => {
        if (err) return reject(err);
        if (n === 0) {
          if (kind === 'read') {
            buf.fill(0, done);
            return resolve();
          }
          return reject(new Error(`pool write made no progress at byte ${pos + done}`));
        }
        step(done + n);
      };
      try {
        if (kind === 'read') readCb(fd, buf, done, buf.length - done, pos + done, cb);
        else writeCb(fd, buf, done, buf.length - done, pos + done, cb);
      } catch (e) {
        reject(e as Error); // an argument the call refuses outright (a closed descriptor)
      }
    };
    step(0);
  });
}

function readAllSync(fd: number, buf: Buffer, pos: number): void {
  let done = 0;
  while (done < buf.length) {
    const n = readSync(fd, buf, done, buf.length - done, pos + done);
    if (n === 0) {
      buf.fill(0, done);
      return;
    }
    done += n;
  }
}

function writeAllSync(fd: number, buf: Buffer, pos: number): void {
  let done = 0;
  while (done < buf.length) done += writeSync(fd, buf, done, buf.length - done, pos + done);
}

/**
 * An arena of `size` bytes whose start is sector-aligned, or null when the filesystem of `near` refuses
 * O_DIRECT. Found by writing PROBE_BYTES with O_DIRECT from each candidate offset to a scratch file.
 */
async function alignedArena(near: string, size: number): Promise<Buffer | null> {
  const raw = Buffer.allocUnsafeSlow(size + SECTOR + PROBE_BYTES);
  const probe = `${near}.probe`;
  let fh: FileHandle;
  try {
    fh = await open(probe, constants.O_RDWR | constants.O_CREAT | constants.O_TRUNC | constants.O_DIRECT, 0o600);
  } catch {
    return null;
  }
  try {
    for (let off = 0; off < SECTOR; off += 16) {
      try {
        await fh.write(raw, off, PROBE_BYTES, 0);
        return raw.subarray(off, off + size);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EINVAL') return null;
      }
    }
    return null;
  } finally {
    await fh.close().catch(() => undefined);
    await unlink(probe).catch(() => undefined);
  }
}

export class DirectPoolFileStore implements BlockStore {
  readonly writesThrough = true;
  /** Per pbn, the tail of its chain of writes (staged or in flight); removed when the last one settles. */
  private inflight = new Map<number, Promise<void>>();
  private open: Run | null = null;
  private freeRuns: Buffer[];
  private roomWaiters: (() => void)[] = [];
  private bounce: Buffer;
  private slots: Buffer[];
  private slotWaiters: ((b: Buffer) => void)[] = [];
  /** The first write failure: every later sync() reports it. */
  private failed: Error | null = null;
  /** Memory handed out by allocAligned(): its ArrayBuffer -> the byte offset where the aligned part starts. */
  private lent = new WeakMap<ArrayBufferLike, number>();
  private arenas = 0;

  private constructor(
    readonly blockSize: number,
    private fh: FileHandle,
    readonly path: string,
    arena: Buffer,
  ) {
    let at = 0;
    const take = (n: number): Buffer => arena.subarray(at, (at += n));
    this.freeRuns = Array.from({ length: RUNS }, () => take(RUN_BYTES));
    this.bounce = take(blockSize + 2 * SECTOR);
    this.slots = Array.from({ length: PARALLEL_SLOTS }, () => take(blockSize + 2 * SECTOR));
  }

  static arenaBytes(blockSize: number): number {
    return RUNS * RUN_BYTES + (1 + PARALLEL_SLOTS) * (blockSize + 2 * SECTOR);
  }

  /** The store, or null when the pool file's filesystem does not support O_DIRECT. */
  static async open(path: string, blockSize: number): Promise<DirectPoolFileStore | null> {
    const arena = await alignedArena(path, DirectPoolFileStore.arenaBytes(blockSize));
    if (!arena) return null;
    let fh: FileHandle;
    try {
      fh = await open(path, constants.O_RDWR | constants.O_CREAT | constants.O_DIRECT, 0o644);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EINVAL') return null;
      throw e;
    }
    return new DirectPoolFileStore(blockSize, fh, path, arena);
  }

  private get fd(): number {
    return this.fh.fd;
  }

  // ---- reads ----------------------------------------------------------------------------------

  /** pbn cannot be read synchronously now: a write to it is staged or in flight (the file does not hold its latest bytes yet). */
  busy(pbn: number): boolean {
    return this.inflight.has(pbn);
  }

  private async settled(pbn: number): Promise<void> {
    if (this.open?.byPbn.has(pbn)) this.submit(this.open);
    for (let t = this.inflight.get(pbn); t; t = this.inflight.get(pbn)) await t.catch(() => undefined);
  }

  async read(pbn: number, dst: Buffer, offsetInBlock = 0): Promise<void> {
    await this.settled(pbn);
    this.readSync(pbn, dst, offsetInBlock);
  }

  /** Only for a pbn that is not busy(). Blocks on the disk (readahead.ts serves sequential readers from memory). */
  readSync(pbn: number, dst: Buffer, offsetInBlock = 0): void {
    const pos = pbn * this.blockSize + offsetInBlock;
    const len = dst.length;
    const from = floorTo(pos, SECTOR);
    const part = this.bounce.subarray(0, ceilTo(pos + len, SECTOR) - from);
    readAllSync(this.fd, part, from);
    part.copy(dst, 0, pos - from, pos - from + len);
  }

  /** Off the event loop, several at once (image streaming reads blocks in random physical order). */
  async readParallel(pbn: number, dst: Buffer): Promise<void> {
    await this.settled(pbn);
    await this.withSlot(async (slot) => {
      const part = slot.subarray(0, ceilTo(dst.length, SECTOR));
      await ioAll('read', this.fd, part, pbn * this.blockSize);
      part.copy(dst, 0, 0, dst.length);
    });
  }

  /**
   * Blocks pbn .. pbn+count-1 with one O_DIRECT read straight into dst when dst is memory from
   * allocAligned() (else block by block through the aligned slots). Waits for writes to those pbns first.
   */
  async readRun(pbn: number, count: number, dst: Buffer): Promise<void> {
    for (let i = 0; i < count; i++) {
      const p = pbn + i;
      if (this.inflight.has(p) || this.open?.byPbn.has(p)) await this.settled(p);
    }
    const base = this.lent.get(dst.buffer);
    if (base !== undefined && (dst.byteOffset - base) % SECTOR === 0 && dst.length % SECTOR === 0) {
      await ioAll('read', this.fd, dst, pbn * this.blockSize);
      return;
    }
    const bs = this.blockSize;
    await Promise.all(Array.from({ length: count }, (_, i) => this.readParallel(pbn + i, dst.subarray(i * bs, (i + 1) * bs))));
  }

  /** Sector-aligned memory for readRun (a new arena, found like the store's own). */
  async allocAligned(bytes: number): Promise<Buffer> {
    const arena = await alignedArena(`${this.path}.${++this.arenas}`, bytes);
    if (!arena) return Buffer.allocUnsafeSlow(bytes);
    this.lent.set(arena.buffer, arena.byteOffset);
    return arena;
  }

  /** Run fn with one of the aligned block-sized buffers, waiting for one if all are in use. */
  private async withSlot<T>(fn: (slot: Buffer) => Promise<T>): Promise<T> {
    const slot = this.slots.pop() ?? (await new Promise<Buffer>((r) => this.slotWaiters.push(r)));
    try {
      return await fn(slot);
    } finally {
      const next = this.slotWaiters.shift();
      if (next) next(slot);
      else this.slots.push(slot);
    }
  }

  // ---- writes ---------------------------------------------------------------------------------

  /** Whether stageBehind may take `bytes` more now (one request: at most one new run). */
  behindRoom(bytes: number): boolean {
    return this.failed === null && bytes <= RUN_BYTES && this.freeRuns.length > 0;
  }

  /**
   * Copy `data` for a write to pbn into the open run now (the caller may reuse its buffer at once); the
   * returned function gives the promise of the write, which settles when the bytes are in the file.
   * The caller checked behindRoom() for the request.
   */
  stageBehind(pbn: number, data: Buffer, offsetInBlock = 0): () => Promise<void> {
    const done = this.stage(pbn, data, offsetInBlock);
    return () => done;
  }

  private stage(pbn: number, data: Buffer, offsetInBlock: number): Promise<void> {
    const pos = pbn * this.blockSize + offsetInBlock;
    const len = data.length;
    if (!aligned(pos, len)) return this.readModifyWrite(pbn, pos, Buffer.from(data));
    let run = this.open;
    if (run) {
      const mine = run.byPbn.get(pbn);
      const hit = mine?.find((s) => pos < s.pos + s.len && s.pos < pos + len);
      if (hit && pos >= hit.pos && pos + len <= hit.pos + hit.len) {
        data.copy(run.buf, hit.mem + pos - hit.pos); // patch what is staged: still one write, in order
        return run.done;
      }
      if (hit || run.used + len > run.buf.length) {
        this.submit(run);
        run = null;
      }
    }
    run ??= this.newRun();
    const tail = this.inflight.get(pbn);
    if (tail && tail !== run.done) run.deps.add(tail);
    data.copy(run.buf, run.used);
    const last = run.stretches[run.stretches.length - 1];
    let s: Stretch;
    if (last && last.pos + last.len === pos && last.mem + last.len === run.used) {
      last.len += len;
      s = last;
    } else {
      s = { pos, len, mem: run.used };
      run.stretches.push(s);
    }
    run.used += len;
    const list = run.byPbn.get(pbn);
    if (!list) run.byPbn.set(pbn, [s]);
    else if (!list.includes(s)) list.push(s);
    this.setTail(pbn, run.done);
    if (run.used === run.buf.length) this.submit(run);
    return run.done;
  }

  private newRun(): Run {
    const buf = this.freeRuns.pop();
    if (!buf) throw new Error('no free write-behind run (behindRoom was not checked)');
    let resolve!: () => void;
    let reject!: (e: Error) => void;
    const done = new Promise<void>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    done.catch(() => undefined); // reported through the callers' promises and sync()
    const run: Run = { buf, used: 0, stretches: [], byPbn: new Map(), deps: new Set(), done, resolve, reject, timer: null };
    run.timer = setTimeout(() => this.submit(run), FLUSH_MS);
    this.open = run;
    return run;
  }

  /** Close the run and write it once the writes it must follow have settled. */
  private submit(run: Run): void {
    if (this.open !== run) return;
    this.closeRun(run);
    void Promise.allSettled([...run.deps]).then(async () => {
      let err: Error | null = null;
      try {
        if (this.failed) throw this.failed;
        await Promise.all(run.stretches.map((s) => ioAll('write', this.fd, run.buf.subarray(s.mem, s.mem + s.len), s.pos)));
      } catch (e) {
        err = e as Error;
        this.failed ??= err;
      }
      this.settleRun(run, err);
    });
  }

  /** The open run takes no more writes. */
  private closeRun(run: Run): void {
    this.open = null;
    if (run.timer) clearTimeout(run.timer);
    run.timer = null;
  }

  /** The run's writes are done (or failed with err): its pbns are no longer busy for it, its buffer is free. */
  private settleRun(run: Run, err: Error | null): void {
    for (const pbn of run.byPbn.keys()) this.clearTail(pbn, run.done);
    this.giveRun(run.buf);
    if (err) run.reject(err);
    else run.resolve();
  }

  private giveRun(buf: Buffer): void {
    this.freeRuns.push(buf);
    const waiters = this.roomWaiters.splice(0);
    for (const w of waiters) w();
  }

  private setTail(pbn: number, p: Promise<void>): void {
    this.inflight.set(pbn, p);
  }

  private clearTail(pbn: number, p: Promise<void>): void {
    if (this.inflight.get(pbn) === p) this.inflight.delete(pbn);
  }

  /** A write that does not cover whole sectors: after the pbn's earlier writes, read the sectors, patch, write. */
  private readModifyWrite(pbn: number, pos: number, copy: Buffer): Promise<void> {
    if (this.open?.byPbn.has(pbn)) this.submit(this.open);
    const from = floorTo(pos, SECTOR);
    const span = ceilTo(pos + copy.length, SECTOR) - from;
    return this.chain(pbn, () => this.throughSlot(span, from, from, (part) => copy.copy(part, pos - from)));
  }

  /** Run `op` after every write to pbn issued so far, as pbn's tail (reads and later writes wait for it). */
  private chain(pbn: number, op: () => Promise<void>): Promise<void> {
    const prev = this.inflight.get(pbn);
    const p = prev ? prev.then(op, op) : op();
    p.catch(() => undefined);
    this.setTail(pbn, p);
    const settle = (): void => this.clearTail(pbn, p);
    p.then(settle, settle);
    return p;
  }

  /** Read `bytes` at readPos into an aligned slot, patch them, write them at writePos; a failure fails the store. */
  private async throughSlot(bytes: number, readPos: number, writePos: number, patch?: (part: Buffer) => void): Promise<void> {
    if (this.failed) throw this.failed;
    await this.withSlot(async (slot) => {
      const part = slot.subarray(0, bytes);
      try {
        await ioAll('read', this.fd, part, readPos);
        patch?.(part);
        await ioAll('write', this.fd, part, writePos);
      } catch (e) {
        this.failed ??= e as Error;
        throw e;
      }
    });
  }

  /**
   * Copy block `from` into block `to` behind the caller's back: the copy reads `from` once every write to
   * it issued so far has settled, and is ordered before every write to `to` issued after this call (it
   * becomes `to`'s tail, which later stages and reads wait for). A partial write into a block a snapshot
   * holds is then acknowledged without waiting for the old block to be read (disk/io.ts writeDiskNow).
   */
  copyBehind(from: number, to: number): Promise<void> {
    const bs = this.blockSize;
    // The open run goes now if it holds a write to either block: a write staged to `to` after this call
    // lands in a later run that waits for the copy, and the copy waits for `from`'s writes, so a run that
    // held both would wait for itself.
    if (this.open && (this.open.byPbn.has(from) || this.open.byPbn.has(to))) this.submit(this.open);
    this.copies++;
    const p = this.chain(to, async () => {
      await this.settled(from);
      await this.throughSlot(bs, from * bs, to * bs);
    });
    const done = (): void => {
      this.copies--;
    };
    p.then(done, done);
    return p;
  }

  /** Copies in flight (copyBehind): the fast path takes no more than COPIES_AHEAD at once. */
  private copies = 0;

  copyRoom(): boolean {
    return this.failed === null && this.copies < COPIES_AHEAD;
  }

  /** The general path's write: staged like a write-behind and submitted at once; settles when written. */
  async write(pbn: number, data: Buffer, offsetInBlock = 0): Promise<void> {
    if (this.failed) throw this.failed;
    // stage() may need one new run (or none, for a read-modify-write)
    while (this.freeRuns.length === 0) {
      if (this.open) this.submit(this.open);
      await new Promise<void>((r) => this.roomWaiters.push(r));
    }
    const done = this.stage(pbn, data, offsetInBlock);
    if (this.open?.byPbn.has(pbn)) this.submit(this.open);
    return done;
  }

  /** Synchronous write, only for a pbn that is not busy() (tests, tools). */
  writeSync(pbn: number, data: Buffer, offsetInBlock = 0): void {
    const pos = pbn * this.blockSize + offsetInBlock;
    const from = floorTo(pos, SECTOR);
    const part = this.bounce.subarray(0, ceilTo(pos + data.length, SECTOR) - from);
    if (!aligned(pos, data.length)) readAllSync(this.fd, part, from);
    data.copy(part, pos - from);
    writeAllSync(this.fd, part, from);
  }

  // ---- durability -----------------------------------------------------------------------------

  private async drainWrites(): Promise<void> {
    if (this.open) this.submit(this.open);
    while (this.inflight.size) await Promise.allSettled([...this.inflight.values()]);
  }

  async sync(): Promise<void> {
    await this.drainWrites();
    if (this.failed) throw this.failed;
    await this.fh.datasync(); // O_DIRECT bypasses the page cache, not the device's write cache
  }

  syncNow(): boolean {
    if (this.failed) throw this.failed;
    const run = this.open;
    for (const tail of this.inflight.values()) if (tail !== run?.done) return false;
    // Every write the open run must follow has settled (each clears its tail when it does).
    if (run) {
      this.closeRun(run);
      let err: Error | null = null;
      try {
        for (const st of run.stretches) writeAllSync(this.fd, run.buf.subarray(st.mem, st.mem + st.len), st.pos);
      } catch (e) {
        err = e as Error;
        this.failed ??= err;
      }
      this.settleRun(run, err);
      if (err) throw err;
    }
    fdatasyncSync(this.fd);
    return true;
  }

  async close(): Promise<void> {
    await this.drainWrites();
    await this.fh.close();
  }

  async trim(blocks: number): Promise<void> {
    await this.drainWrites();
    await trimFile(this.fh, blocks * this.blockSize);
  }
}
