/**
 * Block data in a flat file `pool-<blockSize>.dat` through the page cache: block pbn lives at byte
 * pbn*blockSize. Used where the filesystem refuses O_DIRECT (tmpfs) or VDISKFS_POOL_IO=buffered; elsewhere
 * directPool.ts serves the same file without the page cache. Metadata (which
 * pbn belongs to which disk block) lives in LevelDB; a pbn's bytes are written before the table entry that
 * references it is committed, so a crash can leave only unreferenced (free) blocks with garbage, never a
 * table entry pointing at missing data. Free space is whatever no table references (see allocator.ts).
 * Concurrency: positional reads and writes on one descriptor; callers hold the block lock, and writes to one
 * block are also kept in issue order here (write-behind, below).
 * Reads are synchronous preads on purpose: a block-sized copy from the page cache takes tens of microseconds,
 * far less than the thread-pool round trip of the async API, and FUSE requests for one stream arrive one
 * after another, so latency is throughput here (measured: see README, Performance). Because a synchronous
 * read that misses the page cache stalls the event loop, sequential reads start an asynchronous read of the
 * next READAHEAD bytes on the thread pool (into a scratch buffer, discarded) so that the blocks are in the
 * page cache by the time they are asked for.
 * Writes from the FUSE fast path are written behind (writeBehind): the data is copied and the pwrite runs on
 * the thread pool, on the other core, while the next request travels through FUSE; the pwrite into the page
 * cache was the largest single cost of a 128 KiB write on the event loop. Rules that keep this exact:
 * - all writes to one pbn (behind or not) run in the order they were issued (a per-pbn chain);
 * - a pbn with a write in flight is never read from the file: read() waits for the chain, and readSync
 *   callers ask busy() first;
 * - the table batch that references a new block waits for that block's write (disk/write.ts passes the write's
 *   promise to the commit pipeline), so a crash never leaves an entry pointing at unwritten data;
 * - sync() waits for every write in flight; a write that failed fails every later sync() (like a disk whose
 *   write cache lost data) and ends write-behind;
 * - at most BEHIND_LIMIT bytes are in flight; past that the fast path declines and writes wait.
 */
import { punchRuns } from './punch.js';
import { open, type FileHandle } from 'node:fs/promises';
import { readSync, writeSync, write as writeCb } from 'node:fs';
import type { BlockStore } from './blockStore.js';
import { PbnChains } from './chains.js';

const READAHEAD = 4 * 1024 * 1024;
const BEHIND_LIMIT = 8 * 1024 * 1024;

/**
 * What both pool-file stores (this one and directPool.ts) share: the file, its path, the per-pbn order of
 * its writes in flight, and the file's space on the host filesystem (cut the tail, stat, punch holes).
 */
export abstract class PoolFile {
  /** Writes in flight, per pbn in issue order. */
  protected inflight = new PbnChains();

  protected constructor(
    readonly blockSize: number,
    protected fh: FileHandle,
    readonly path: string,
  ) {}

  async trim(blocks: number): Promise<void> {
    await this.inflight.drain();
    await trimFile(this.fh, blocks * this.blockSize);
  }

  async fileStat(): Promise<{ length: number; allocated: number }> {
    const st = await this.fh.stat();
    return { length: st.size, allocated: st.blocks * 512 };
  }

  /** After every write in flight (an earlier write must not land in a punched hole). */
  async punch(runs: [number, number][]): Promise<void> {
    await this.inflight.drain();
    await punchRuns(this.path, this.blockSize, runs);
  }
}

export class PoolFileStore extends PoolFile implements BlockStore {
  /** Next byte a sequential reader would ask for, and how far the readahead has been issued. */
  private nextSeq = -1;
  private aheadTo = 0;
  private aheadBusy = false;
  private scratch: Buffer | null = null;
  private behindBytes = 0;
  private spare: Buffer[] = [];
  /** The first write-behind failure: every later sync() reports it. */
  private failed: Error | null = null;

  private constructor(blockSize: number, fh: FileHandle, path: string) {
    super(blockSize, fh, path);
  }

  static async open(path: string, blockSize: number): Promise<PoolFileStore> {
    const fh = await open(path, 'a+').then(async (h) => {
      await h.close();
      return open(path, 'r+');
    });
    return new PoolFileStore(blockSize, fh, path);
  }

  async read(pbn: number, dst: Buffer, offsetInBlock = 0): Promise<void> {
    await this.inflight.settled(pbn);
    this.readSync(pbn, dst, offsetInBlock);
  }

  /** A write to pbn is in flight: readSync would see the file's older bytes. */
  busy(pbn: number): boolean {
    return this.inflight.has(pbn);
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
    await this.inflight.settled(pbn);
    await this.readFrom(pbn * this.blockSize, dst);
  }

  async readRun(pbn: number, count: number, dst: Buffer): Promise<void> {
    for (let i = 0; i < count; i++) if (this.inflight.has(pbn + i)) await this.inflight.settled(pbn + i);
    await this.readFrom(pbn * this.blockSize, dst);
  }

  /** Fill dst from file offset pos on the thread pool; what lies past the end of the file reads as zeros. */
  private async readFrom(pos: number, dst: Buffer): Promise<void> {
    let done = 0;
    while (done < dst.length) {
      const { bytesRead } = await this.fh.read(dst, done, dst.length - done, pos + done);
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
    if (!this.inflight.has(pbn)) return this.writeSync(pbn, data, offsetInBlock);
    await this.inflight.after(pbn, 1, async () => this.writeSync(pbn, data, offsetInBlock));
  }

  /** Only for a pbn that is not busy() (the caller checks; write() orders itself). */
  writeSync(pbn: number, data: Buffer, offsetInBlock = 0): void {
    const pos = pbn * this.blockSize + offsetInBlock;
    let done = 0;
    while (done < data.length) done += writeSync(this.fh.fd, data, done, data.length - done, pos + done);
  }

  /** Whether stageBehind() may take `bytes` more now. */
  behindRoom(bytes: number): boolean {
    return this.failed === null && this.behindBytes + bytes <= BEHIND_LIMIT;
  }

  /** A private copy of `data` now; the returned function starts its write behind (see BlockStore). */
  stageBehind(pbn: number, data: Buffer, offsetInBlock = 0, after?: Promise<unknown>): () => Promise<void> {
    const copy = (this.spare.pop() ?? Buffer.allocUnsafe(this.blockSize)).subarray(0, data.length);
    data.copy(copy);
    // Nothing of `data` past this line: the caller may reuse it once this returns.
    return () => this.writeBehind(pbn, copy, offsetInBlock, after);
  }

  /**
   * Write `copy` (from stageBehind; the store reclaims it) on the thread pool after every earlier write to
   * pbn. The promise settles when the bytes are in the file (page cache).
   */
  private writeBehind(pbn: number, copy: Buffer, offsetInBlock: number, after?: Promise<unknown>): Promise<void> {
    const length = copy.length;
    const pos = pbn * this.blockSize + offsetInBlock;
    this.behindBytes += length;
    const gated = after?.then(() => null, (e: unknown) => (e instanceof Error ? e : new Error(String(e))));
    return this.inflight.after(pbn, 1, async () => {
      const refused = await gated;
      return new Promise<void>((resolve, reject) => {
        const step = (done: number): void => {
          if (done >= length) return finish(null);
          try {
            writeCb(this.fh.fd, copy, done, length - done, pos + done, (err, n) => (err ? finish(err) : step(done + n)));
          } catch (e) {
            finish(e as Error); // an argument the call refuses outright (a closed descriptor)
          }
        };
        const finish = (err: Error | null): void => {
          this.behindBytes -= length;
          // the whole block-sized buffer stageBehind took (its own ArrayBuffer: blockSize >= 4 KiB is never pooled)
          this.spare.push(Buffer.from(copy.buffer, copy.byteOffset, this.blockSize));
          if (!err) return resolve();
          this.failed ??= err;
          reject(err);
        };
        if (refused) finish(refused);
        else step(0);
      });
    });
  }

  async sync(): Promise<void> {
    await this.inflight.drain();
    if (this.failed) throw this.failed;
    await this.fh.datasync();
  }

  async close(): Promise<void> {
    await this.inflight.drain();
    await this.fh.close();
  }

}

/** Truncate a pool file to `bytes` if it is longer (never extends it). */
export async function trimFile(fh: FileHandle, bytes: number): Promise<void> {
  if ((await fh.stat()).size > bytes) await fh.truncate(bytes);
}
