/**
 * Block data in `pool-<blockSize>.dat` (pbn at byte pbn × blockSize, the same file format as poolFile.ts),
 * read and written with O_DIRECT: the pool never goes through the page cache. Why: the disk file a user
 * writes is already cached once by the kernel on the FUSE side; caching its blocks a second time in the
 * pool file's page cache doubles the memory every byte written takes, and fresh page-cache pages were the
 * largest single cost of a sustained write on the benchmark machine (a 128 KiB buffered pwrite from Node
 * reached 301–341 MB/s, the same data with O_DIRECT 870 MB/s, and in 1 MiB pieces 1.9 GB/s; README,
 * Performance). Stores whose filesystem refuses O_DIRECT (tmpfs) use poolFile.ts instead (bottoms.ts).
 *
 * O_DIRECT needs file offsets, lengths and memory aligned to the device's sector (directIo.ts): memory from
 * allocAligned() is read into and written from directly (readRun, writeRun); anything else goes through the
 * store's aligned block-sized slots (a bounce buffer for the synchronous calls). Writes that do not cover
 * whole sectors read the enclosing sectors first.
 *
 * A plain store: write() settles once the bytes are on the device, writes to one pbn land in issue order
 * (a per-pbn chain; read(), readRun and readParallel wait for it; busy() says so), nothing is staged. The
 * layers over it (bottoms.ts) add write-behind (writeBehind.ts, through writeRun) and readahead
 * (readahead.ts, through readRun).
 */
import { open, type FileHandle } from 'node:fs/promises';
import { constants, fdatasyncSync } from 'node:fs';
import type { Patch, RunStore } from './blockStore.js';
import { PoolFile } from './poolFile.js';
import { SECTOR, aligned, alignedArena, ceilTo, floorTo, ioAll, readAllSync, writeAllSync } from './directIo.js';

const PARALLEL_SLOTS = 4;
/** Each buffer of the arena starts on a page boundary (the arena does: util/memory.ts), so O_DIRECT runs at full speed. */
const PAGE = 4096;
const slotBytes = (blockSize: number): number => ceilTo(blockSize + 2 * SECTOR, PAGE);

export class DirectPoolFileStore extends PoolFile implements RunStore {
  readonly writesThrough = true;
  readonly sector = SECTOR;
  private bounce: Buffer;
  private slots: Buffer[];
  private slotWaiters: ((b: Buffer) => void)[] = [];
  /** Memory handed out by allocAligned(): its ArrayBuffer -> the byte offset where the aligned part starts. */
  private lent = new WeakMap<ArrayBufferLike, number>();
  private arenas = 0;

  private constructor(blockSize: number, fh: FileHandle, path: string, arena: Buffer) {
    super(blockSize, fh, path);
    let at = 0;
    const take = (n: number): Buffer => arena.subarray(at, (at += n));
    this.bounce = take(slotBytes(blockSize));
    this.slots = Array.from({ length: PARALLEL_SLOTS }, () => take(slotBytes(blockSize)));
  }

  static arenaBytes(blockSize: number): number {
    return (1 + PARALLEL_SLOTS) * slotBytes(blockSize);
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

  /** Sector-aligned memory (a new arena, found like the store's own): readRun and writeRun use it directly. */
  async allocAligned(bytes: number): Promise<Buffer> {
    const arena = await alignedArena(`${this.path}.${++this.arenas}`, bytes);
    if (!arena) return Buffer.allocUnsafeSlow(bytes);
    this.lent.set(arena.buffer, arena.byteOffset);
    return arena;
  }

  /** buf is allocAligned() memory at a sector boundary, a whole number of sectors long. */
  private isLent(buf: Buffer): boolean {
    const base = this.lent.get(buf.buffer);
    return base !== undefined && (buf.byteOffset - base) % SECTOR === 0 && buf.length % SECTOR === 0;
  }

  // ---- reads ----------------------------------------------------------------------------------

  /** A write to pbn is in flight: the file does not hold its latest bytes yet. */
  busy(pbn: number): boolean {
    return this.inflight.has(pbn);
  }

  async read(pbn: number, dst: Buffer, offsetInBlock = 0): Promise<void> {
    await this.inflight.settled(pbn);
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
    await this.inflight.settled(pbn);
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
    for (let i = 0; i < count; i++) if (this.inflight.has(pbn + i)) await this.inflight.settled(pbn + i);
    if (this.isLent(dst)) return ioAll('read', this.fd, dst, pbn * this.blockSize);
    const bs = this.blockSize;
    await Promise.all(Array.from({ length: count }, (_, i) => this.readParallel(pbn + i, dst.subarray(i * bs, (i + 1) * bs))));
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

  /** After every write to pbn issued before it; settles when the bytes are in the file. */
  write(pbn: number, data: Buffer, offsetInBlock = 0): Promise<void> {
    const pos = pbn * this.blockSize + offsetInBlock;
    return this.inflight.after(pbn, 1, () => this.put(pos, data));
  }

  /** Write data at pos: straight from allocAligned memory, else through a slot (reading partial sectors first). */
  private async put(pos: number, data: Buffer): Promise<void> {
    if (aligned(pos, data.length) && this.isLent(data)) return ioAll('write', this.fd, data, pos);
    await this.withSlot(async (slot) => {
      const from = floorTo(pos, SECTOR);
      const part = slot.subarray(0, ceilTo(pos + data.length, SECTOR) - from);
      if (!aligned(pos, data.length)) await ioAll('read', this.fd, part, from);
      data.copy(part, pos - from);
      await ioAll('write', this.fd, part, from);
    });
  }

  /**
   * src (allocAligned memory; offset and length whole sectors) at byte offsetInBlock of block pbn onward,
   * over as many blocks as it covers, with one pwrite: how write-behind (writeBehind.ts) writes a run.
   * Ordered after every write in flight to those blocks.
   */
  writeRun(pbn: number, offsetInBlock: number, src: Buffer): Promise<void> {
    const pos = pbn * this.blockSize + offsetInBlock;
    const count = Math.ceil((offsetInBlock + src.length) / this.blockSize);
    if (!aligned(pos, src.length) || !this.isLent(src)) return Promise.reject(new RangeError('writeRun needs sector-aligned memory from allocAligned()'));
    return this.inflight.after(pbn, count, () => ioAll('write', this.fd, src, pos));
  }

  /** writeRun on the calling thread, only when none of its blocks is busy() (write-behind's syncNow). */
  writeRunSync(pbn: number, offsetInBlock: number, src: Buffer): void {
    if (!aligned(offsetInBlock, src.length) || !this.isLent(src)) throw new RangeError('writeRunSync needs sector-aligned memory from allocAligned()');
    writeAllSync(this.fd, src, pbn * this.blockSize + offsetInBlock);
  }

  /** Copy block `from` into block `to` through a slot (one read into it, the patch, one write from it), after the writes in flight to both. */
  copyBlock(from: number, to: number, patch?: Patch): Promise<void> {
    const bs = this.blockSize;
    return this.inflight.after(to, 1, async () => {
      await this.inflight.settled(from);
      await this.withSlot(async (slot) => {
        const part = slot.subarray(0, bs);
        await ioAll('read', this.fd, part, from * bs);
        patch?.data.copy(part, patch.offsetInBlock);
        await ioAll('write', this.fd, part, to * bs);
      });
    });
  }

  /** Synchronous write, only for a pbn that is not busy(). */
  writeSync(pbn: number, data: Buffer, offsetInBlock = 0): void {
    const pos = pbn * this.blockSize + offsetInBlock;
    const from = floorTo(pos, SECTOR);
    const part = this.bounce.subarray(0, ceilTo(pos + data.length, SECTOR) - from);
    if (!aligned(pos, data.length)) readAllSync(this.fd, part, from);
    data.copy(part, pos - from);
    writeAllSync(this.fd, part, from);
  }

  // ---- durability -----------------------------------------------------------------------------

  async sync(): Promise<void> {
    await this.inflight.drain();
    await this.fh.datasync(); // O_DIRECT bypasses the page cache, not the device's write cache
  }

  /** fdatasync on this thread, when no write is in flight (see BlockStore.syncNow). */
  syncNow(): boolean {
    if (this.inflight.size) return false;
    fdatasyncSync(this.fd);
    return true;
  }

  async close(): Promise<void> {
    await this.inflight.drain();
    await this.fh.close();
  }

}
