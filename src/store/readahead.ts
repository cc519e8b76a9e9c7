/**
 * Readahead as a block-store layer: sequential readers are served from chunks (CHUNKS × chunkBytes, read
 * ahead on the thread pool with the inner store's readRun into memory from its allocAligned), so that the
 * synchronous reads of the fast path (readSync, disk/read.ts readViewNow) copy from memory instead of
 * blocking on the device. Meant for a bottom that does not go through the page cache (the O_DIRECT pool
 * file, assembled in bottoms.ts); the page-cache pool file warms the kernel's cache instead (poolFile.ts).
 * Rules that keep it exact:
 * - every write through the layer (write, writeSync, stageBehind, copyBehind's target, discard, trim) drops
 *   the chunks it overlaps before it reaches the inner store, and a chunk read in flight when that happens
 *   never serves (its bytes may predate the write);
 * - no chunk is read over a pbn with a write staged or in flight below (inner busy()), or issued through
 *   the layer and not settled (write() may wait before it stages: for room, or behind a delay layer);
 * - busy(pbn) is also true while the chunk that will hold pbn is being read: read() waits for it instead
 *   of reading the same bytes a second time, and the fast path takes the async path meanwhile.
 * The layer offers every optional method of the inner store; only reads and busy() add anything.
 */
import type { BlockStore, Patch } from './blockStore.js';

const CHUNK_MIN = 2 * 1024 * 1024;
const CHUNKS = 6;
/** Chunks kept read ahead of the furthest byte a sequential reader asked for. */
const AHEAD = 3;
/** Requests this large near the last one read ahead at once (the kernel's own readahead sends such). */
const SEQ_REQUEST = 64 * 1024;
/** Smaller requests read ahead after this many in a row near each other. */
const SEQ_RUN = 3;

/** A chunk: bytes [idx × chunkBytes, +chunkBytes) of the store once `ready`. */
interface Chunk {
  buf: Buffer;
  /** Chunk index, -1 while unused. */
  idx: number;
  /** The read in flight, if any. */
  loading: Promise<void> | null;
  ready: boolean;
  /** False once a write overlapped the chunk since its read was issued: it serves nothing. */
  valid: boolean;
}

export class ReadaheadStore implements BlockStore {
  readonly blockSize: number;
  private readonly chunkBytes: number;
  private chunks: Chunk[];
  /** End of the furthest byte the current sequential reader asked for (-1: none yet). */
  private seqHead = -1;
  /** Requests in a row that were near seqHead. */
  private nearRun = 0;
  /** pbn -> writes issued through this layer that have not settled. */
  private writing = new Map<number, number>();

  readonly readParallel?: (pbn: number, dst: Buffer) => Promise<void>;
  readonly allocAligned?: (bytes: number) => Promise<Buffer>;
  readonly copyRoom?: () => boolean;
  readonly behindRoom?: (bytes: number, fresh?: boolean) => boolean;
  readonly syncNow?: () => boolean;
  readonly writeSync?: (pbn: number, data: Buffer, offsetInBlock?: number) => void;
  readonly stageBehind?: (pbn: number, data: Buffer, offsetInBlock?: number, after?: Promise<unknown>) => () => Promise<void>;
  readonly copyBehind?: (from: number, to: number, patch?: Patch) => Promise<void>;
  readonly discard?: (pbn: number) => Promise<void>;
  readonly trim?: (blocks: number) => Promise<void>;
  readonly punch?: (runs: [number, number][]) => Promise<void>;
  readonly fileStat?: () => Promise<{ length: number; allocated: number }>;

  /** The inner store with readahead over it, or the store itself when it has no readRun and readSync. */
  static async over(inner: BlockStore): Promise<BlockStore> {
    if (!inner.readRun || !inner.readSync) return inner;
    const chunkBytes = Math.max(CHUNK_MIN, inner.blockSize);
    const mem = inner.allocAligned ? await inner.allocAligned(CHUNKS * chunkBytes) : Buffer.allocUnsafeSlow(CHUNKS * chunkBytes);
    return new ReadaheadStore(inner, chunkBytes, mem);
  }

  private constructor(
    private inner: BlockStore,
    chunkBytes: number,
    mem: Buffer,
  ) {
    this.blockSize = inner.blockSize;
    this.chunkBytes = chunkBytes;
    this.chunks = Array.from({ length: CHUNKS }, (_, i) => ({ buf: mem.subarray(i * chunkBytes, (i + 1) * chunkBytes), idx: -1, loading: null, ready: false, valid: false }));
    const s = inner;
    const bs = s.blockSize;
    if (s.readParallel) this.readParallel = (pbn, dst) => s.readParallel!(pbn, dst);
    if (s.allocAligned) this.allocAligned = (bytes) => s.allocAligned!(bytes);
    if (s.copyRoom) this.copyRoom = () => s.copyRoom!();
    if (s.behindRoom) this.behindRoom = (bytes, fresh) => s.behindRoom!(bytes, fresh);
    if (s.syncNow) this.syncNow = () => s.syncNow!();
    if (s.writeSync) this.writeSync = (pbn, data, off = 0) => (this.drop(pbn * bs + off, data.length), s.writeSync!(pbn, data, off));
    // staged at once (the caller checked behindRoom), so busy below from here until written
    if (s.stageBehind) this.stageBehind = (pbn, data, off = 0, after) => (this.drop(pbn * bs + off, data.length), s.stageBehind!(pbn, data, off, after));
    if (s.copyBehind) this.copyBehind = (from, to, patch) => this.issue(to, bs * to, bs, () => s.copyBehind!(from, to, patch));
    if (s.discard) this.discard = (pbn) => this.issue(pbn, pbn * bs, bs, () => s.discard!(pbn));
    if (s.trim) this.trim = (blocks) => (this.drop(blocks * bs, Infinity), s.trim!(blocks));
    if (s.fileStat) this.fileStat = () => s.fileStat!();
    if (s.punch) this.punch = (runs) => (runs.forEach(([pbn, n]) => this.drop(pbn * bs, n * bs)), s.punch!(runs));
  }


  get writesThrough(): boolean | undefined {
    return this.inner.writesThrough;
  }

  // ---- reads ----------------------------------------------------------------------------------

  /** A write to pbn is issued and not settled, or the chunk that will hold pbn is being read. */
  busy(pbn: number): boolean {
    return this.writing.has(pbn) || (this.inner.busy?.(pbn) ?? false) || !!this.chunkAt(pbn * this.blockSize)?.loading;
  }

  private chunkAt(pos: number): Chunk | undefined {
    return this.chunk(Math.floor(pos / this.chunkBytes));
  }

  /** The valid chunk holding chunk index idx (loading or ready), if any. */
  private chunk(idx: number): Chunk | undefined {
    return this.chunks.find((c) => c.idx === idx && c.valid);
  }

  async read(pbn: number, dst: Buffer, offsetInBlock = 0): Promise<void> {
    const pos = pbn * this.blockSize + offsetInBlock;
    await this.chunkAt(pos)?.loading;
    if (!this.writing.has(pbn) && !this.inner.busy?.(pbn)) return this.readSync(pbn, dst, offsetInBlock);
    await this.inner.read(pbn, dst, offsetInBlock); // waits for the write below
    this.readAhead(pos, dst.length);
  }

  /** Only for a pbn that is not busy(). From a ready chunk when one holds the range, else from the inner store. */
  readSync(pbn: number, dst: Buffer, offsetInBlock = 0): void {
    const pos = pbn * this.blockSize + offsetInBlock;
    const c = this.chunkAt(pos);
    if (c?.ready) {
      // a block never straddles chunks (chunkBytes is a multiple of blockSize)
      const at = pos - c.idx * this.chunkBytes;
      c.buf.copy(dst, 0, at, at + dst.length);
    } else this.inner.readSync!(pbn, dst, offsetInBlock);
    this.readAhead(pos, dst.length);
  }

  readRun(pbn: number, count: number, dst: Buffer): Promise<void> {
    return this.inner.readRun!(pbn, count, dst);
  }

  /**
   * Keep AHEAD chunks read ahead of a sequential reader. The kernel sends a reader's readahead as several
   * requests at once, and they may arrive out of order: a request counts as sequential when it falls near
   * the furthest byte asked for so far, and chunks are found by their index, not by the last position.
   */
  private readAhead(pos: number, len: number): void {
    const near = this.seqHead >= 0 && Math.abs(pos - this.seqHead) <= 2 * this.chunkBytes;
    this.seqHead = near ? Math.max(this.seqHead, pos + len) : pos + len;
    this.nearRun = near ? this.nearRun + 1 : 0;
    // A small request that merely lands near the last one is how random readers look now and then (a 4 KiB
    // reader over 1 GiB does every ~100 requests): reading ahead for it cost up to 10 MiB of reads that
    // nobody wanted. Small requests start readahead only after a run of them.
    if (!near || (len < SEQ_REQUEST && this.nearRun < SEQ_RUN)) return;
    const first = Math.floor(pos / this.chunkBytes);
    const last = Math.floor(this.seqHead / this.chunkBytes) + AHEAD;
    const perChunk = this.chunkBytes / this.blockSize;
    for (let i = first; i <= last; i++) {
      if (this.chunk(i)) continue;
      // a chunk nobody needs: idle, and unused, overwritten, or outside [first - 1, last]
      const c = this.chunks.find((k) => !k.loading && (k.idx < 0 || !k.valid || k.idx < first - 1 || k.idx > last));
      if (!c) return;
      const firstPbn = i * perChunk;
      let writing = false;
      for (let p = firstPbn; p < firstPbn + perChunk && !writing; p++) writing = this.writing.has(p) || (this.inner.busy?.(p) ?? false);
      if (writing) continue; // its bytes are still changing: read it on a later request
      c.idx = i;
      c.valid = true;
      c.ready = false;
      const loading: Promise<void> = this.inner.readRun!(firstPbn, perChunk, c.buf).then(
        () => {
          if (c.loading === loading) c.loading = null;
          c.ready = c.valid;
        },
        () => {
          if (c.loading === loading) c.loading = null;
          c.valid = false;
        },
      );
      c.loading = loading;
    }
  }

  /** Bytes [pos, pos+len) are about to change: no chunk may serve their old content. */
  private drop(pos: number, len: number): void {
    for (const c of this.chunks) {
      if (c.idx >= 0 && c.valid && pos < (c.idx + 1) * this.chunkBytes && c.idx * this.chunkBytes < pos + len) {
        c.valid = false;
        c.ready = false;
      }
    }
  }

  // ---- writes and durability: forwarded after dropping the chunks they overlap ----------------

  write(pbn: number, data: Buffer, offsetInBlock = 0): Promise<void> {
    return this.issue(pbn, pbn * this.blockSize + offsetInBlock, data.length, () => this.inner.write(pbn, data, offsetInBlock));
  }

  /** A write of bytes [pos, pos+len) of pbn: drop the chunks it overlaps, and read none over pbn until it settles. */
  private issue(pbn: number, pos: number, len: number, op: () => Promise<void>): Promise<void> {
    this.drop(pos, len);
    this.writing.set(pbn, (this.writing.get(pbn) ?? 0) + 1);
    let p: Promise<void>;
    try {
      p = op();
    } catch (e) {
      p = Promise.reject(e as Error);
    }
    const done = (): void => {
      const n = (this.writing.get(pbn) ?? 1) - 1;
      if (n > 0) this.writing.set(pbn, n);
      else this.writing.delete(pbn);
    };
    p.then(done, done);
    return p;
  }



  sync(): Promise<void> {
    return this.inner.sync();
  }

  async close(): Promise<void> {
    await Promise.allSettled(this.chunks.map((c) => c.loading));
    await this.inner.close();
  }
}
