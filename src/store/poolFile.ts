/**
 * Block data in a flat file `pool-<blockSize>.dat`: block pbn lives at byte pbn*blockSize. Metadata (which
 * pbn belongs to which disk block) lives in LevelDB; a pbn's bytes are written before the table entry that
 * references it is committed, so a crash can leave only unreferenced (free) blocks with garbage, never a
 * table entry pointing at missing data. Free space is whatever no table references (see allocator.ts).
 * Concurrency: positional reads and writes on one descriptor; callers serialise writes per block.
 * I/O is synchronous pread/pwrite on purpose: a block-sized copy to or from the page cache takes tens of
 * microseconds, far less than the thread-pool round trip of the async API, and FUSE requests for one
 * stream arrive one after another, so latency is throughput here (measured: see README, Performance).
 * Because a synchronous read that misses the page cache stalls the event loop, sequential reads start an
 * asynchronous read of the next READAHEAD bytes on the thread pool (into a scratch buffer, discarded) so
 * that the blocks are in the page cache by the time they are asked for.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { readSync, writeSync } from 'node:fs';
import type { BlockStore } from './blockStore.js';

const READAHEAD = 4 * 1024 * 1024;

export class PoolFileStore implements BlockStore {
  /** Next byte a sequential reader would ask for, and how far the readahead has been issued. */
  private nextSeq = -1;
  private aheadTo = 0;
  private aheadBusy = false;
  private scratch: Buffer | null = null;

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

  /** Warm the page cache ahead of a sequential reader (one read in flight; results discarded). */
  private readAhead(pos: number, length: number): void {
    const sequential = Math.abs(pos - this.nextSeq) <= 4 * this.blockSize;
    this.nextSeq = pos + length;
    if (!sequential || this.aheadBusy) return;
    if (this.aheadTo > this.nextSeq + READAHEAD / 2) return;
    const from = Math.max(this.aheadTo, this.nextSeq);
    this.aheadBusy = true;
    this.scratch ??= Buffer.allocUnsafe(READAHEAD);
    this.fh.read(this.scratch, 0, READAHEAD, from).then(
      ({ bytesRead }) => {
        this.aheadTo = from + bytesRead;
        this.aheadBusy = false;
      },
      () => {
        this.aheadBusy = false;
      },
    );
  }

  async write(pbn: number, data: Buffer, offsetInBlock = 0): Promise<void> {
    this.writeSync(pbn, data, offsetInBlock);
  }

  writeSync(pbn: number, data: Buffer, offsetInBlock = 0): void {
    const pos = pbn * this.blockSize + offsetInBlock;
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
