/**
 * Block data in a flat file `pool-<blockSize>.dat`: block pbn lives at byte pbn*blockSize. Metadata (which
 * pbn belongs to which disk block) lives in LevelDB; a pbn's bytes are written before the table entry that
 * references it is committed, so a crash can leave only unreferenced (free) blocks with garbage, never a
 * table entry pointing at missing data. Free space is whatever no table references (see allocator.ts).
 * Concurrency: positional reads and writes on one descriptor; callers serialise writes per block.
 * I/O is synchronous pread/pwrite on purpose: a block-sized copy to or from the page cache takes tens of
 * microseconds, far less than the thread-pool round trip of the async API, and FUSE requests for one
 * stream arrive one after another, so latency is throughput here (measured: see README, Performance).
 * Because a synchronous read that misses the page cache stalls the event loop, a sequential reader is served
 * from readahead chunks: aligned AHEAD_CHUNK pieces of the file read on the thread pool, up to AHEAD_WINDOW
 * ahead of the reader, several at once. A request inside a chunk that has arrived is a memory copy; any other
 * request is a pread (which the readahead has usually brought into the page cache by then). Every write
 * through this store drops the chunks it overlaps, and a chunk whose read was in flight during such a write
 * is never used.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { readSync, writeSync } from 'node:fs';
import type { BlockStore } from './blockStore.js';

const AHEAD_CHUNK = 1024 * 1024;
const AHEAD_WINDOW = 8 * 1024 * 1024;
const AHEAD_PARALLEL = 4;

interface Chunk {
  start: number;
  buf: Buffer;
  /** Valid bytes (short at the end of the file); -1 while the read is in flight. */
  length: number;
}

export class PoolFileStore implements BlockStore {
  /** Next byte a sequential reader would ask for, and how far the readahead has been issued. */
  private nextSeq = -1;
  private aheadTo = 0;
  private aheadBusy = 0;
  /** Readahead chunks by start offset; a chunk removed from here is never read from again. */
  private chunks = new Map<number, Chunk>();
  private spare: Buffer[] = [];

  private constructor(
    readonly blockSize: number,
    private fh: FileHandle,
    readonly path: string,
  ) {}

  static async open(path: string, blockSize: number): Promise<PoolFileStore> {
    const fh = await open(path, 'a+').then(async (h) => {
      await h.close();
      return open(path, 'r+');
    });
    return new PoolFileStore(blockSize, fh, path);
  }

  async read(pbn: number, dst: Buffer, offsetInBlock = 0): Promise<void> {
    this.readSync(pbn, dst, offsetInBlock);
  }

  readSync(pbn: number, dst: Buffer, offsetInBlock = 0): void {
    const want = dst.length;
    const pos = pbn * this.blockSize + offsetInBlock;
    this.readAhead(pos, want);
    const c = this.chunks.get(pos - (pos % AHEAD_CHUNK));
    if (c && c.length >= 0 && pos + want <= c.start + c.length) {
      c.buf.copy(dst, 0, pos - c.start, pos - c.start + want);
      return;
    }
    let done = 0;
    while (done < want) {
      const bytesRead = readSync(this.fh.fd, dst, done, want - done, pos + done);
      if (bytesRead === 0) {
        dst.fill(0, done); // never written past the file end (cannot happen for referenced blocks)
        return;
      }
      done += bytesRead;
    }
  }

  async readParallel(pbn: number, dst: Buffer): Promise<void> {
    let done = 0;
    while (done < dst.length) {
      const { bytesRead } = await this.fh.read(dst, done, dst.length - done, pbn * this.blockSize + done);
      if (bytesRead === 0) {
        dst.fill(0, done);
        return;
      }
      done += bytesRead;
    }
  }

  /**
   * Keep AHEAD_WINDOW bytes of chunks ahead of a sequential reader, AHEAD_PARALLEL reads in flight at most
   * (the disk serves several at once; one at a time left the reader waiting on it). Chunks the reader has
   * passed are recycled; a jump elsewhere drops them all.
   */
  private readAhead(pos: number, length: number): void {
    const sequential = Math.abs(pos - this.nextSeq) <= 4 * this.blockSize;
    this.nextSeq = pos + length;
    const here = pos - (pos % AHEAD_CHUNK);
    for (const start of this.chunks.keys()) if (!sequential || start < here) this.drop(start);
    if (!sequential) {
      this.aheadTo = here;
      return;
    }
    if (this.aheadTo < here) this.aheadTo = here;
    while (this.aheadBusy < AHEAD_PARALLEL && this.aheadTo < this.nextSeq + AHEAD_WINDOW) {
      const c: Chunk = { start: this.aheadTo, buf: this.spare.pop() ?? Buffer.allocUnsafe(AHEAD_CHUNK), length: -1 };
      this.aheadTo += AHEAD_CHUNK;
      this.aheadBusy++;
      this.chunks.set(c.start, c);
      const done = (bytesRead: number): void => {
        this.aheadBusy--;
        if (this.chunks.get(c.start) === c) c.length = bytesRead;
        else this.spare.push(c.buf); // dropped while in flight: its content may predate a write
      };
      this.fh.read(c.buf, 0, AHEAD_CHUNK, c.start).then(({ bytesRead }) => done(bytesRead), () => done(0));
    }
  }

  /** Forget a chunk; its buffer is reused once no read into it is in flight. */
  private drop(start: number): void {
    const c = this.chunks.get(start);
    if (!c) return;
    this.chunks.delete(start);
    if (c.length >= 0) this.spare.push(c.buf);
  }

  async write(pbn: number, data: Buffer, offsetInBlock = 0): Promise<void> {
    this.writeSync(pbn, data, offsetInBlock);
  }

  writeSync(pbn: number, data: Buffer, offsetInBlock = 0): void {
    const pos = pbn * this.blockSize + offsetInBlock;
    if (this.chunks.size) for (let at = pos - (pos % AHEAD_CHUNK); at < pos + data.length; at += AHEAD_CHUNK) this.drop(at);
    let done = 0;
    while (done < data.length) done += writeSync(this.fh.fd, data, done, data.length - done, pos + done);
  }

  async sync(): Promise<void> {
    await this.fh.datasync();
  }

  async close(): Promise<void> {
    await this.fh.close();
  }
}
