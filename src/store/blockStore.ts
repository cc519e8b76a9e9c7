/**
 * The physical block store: fixed-size blocks addressed by physical block number (pbn). It knows nothing
 * of disks, tables or snapshots. One store serves one block size; the pool keeps one store per block size
 * in use, opened through a BlockStoreFactory (the store's "bottom", chosen when the store is created and
 * recorded in its format record):
 * - DirectPoolFileStore / PoolFileStore (`--block-store file`, the default): block data in
 *   `pool-<blockSize>.dat`, pbn at byte pbn × blockSize, read and written with O_DIRECT where the filesystem
 *   supports it (directPool.ts), else through the page cache (poolFile.ts). A freed pbn keeps its stale bytes
 *   until reused; the file never shrinks by itself.
 * - LevelBlockStore (`--block-store leveldb`): one binary LevelDB value per block in the store's database,
 *   beside the tables; kept to measure the single-database layout side by side (README, Performance).
 *   A freed pbn's value must be deleted (discard) or the database would only grow.
 * Layers wrap an inner store and offer every optional method it offers (test/unit/storeConformance.test.ts
 * runs every bottom and every layer through this contract):
 * - over the O_DIRECT pool file (bottoms.ts directStack, s3backer-style): WriteBehindStore (writeBehind.ts)
 *   stages writes in runs and writes them with the bottom's writeRun (RunStore, below); ReadaheadStore
 *   (readahead.ts) on top serves sequential readers from chunks read ahead with readRun;
 * - FaultyStore (faulty.ts, tests only) on top of the stack, through Registry.open's `wrap` (pool.ts).
 * The page-cache pool file keeps its own write-behind (a copy per write, pwrite on the thread pool) and
 * readahead (warming the kernel's cache): both are what a page-cache file needs, and neither needs runs.
 */
export interface BlockStore {
  readonly blockSize: number;
  /** Read block `pbn` into `dst` (exactly blockSize bytes, or a sub-range given by offset/length). */
  read(pbn: number, dst: Buffer, offsetInBlock?: number): Promise<void>;
  /**
   * Like read(), but free to run off the event loop so that many reads can be in flight at once (image
   * streaming reads blocks in logical order, which is random physical order on a cold cache).
   */
  readParallel?(pbn: number, dst: Buffer): Promise<void>;
  /**
   * Read the `count` consecutive blocks pbn .. pbn+count-1 into dst (count × blockSize bytes) with one
   * request, off the event loop (image producers read runs of physically adjacent blocks). dst from
   * allocAligned() is read into directly; other memory may cost a copy.
   */
  readRun?(pbn: number, count: number, dst: Buffer): Promise<void>;
  /** Memory suited to readRun (sector-aligned for O_DIRECT pool files): every block-multiple offset of it. */
  allocAligned?(bytes: number): Promise<Buffer>;
  /** Write `data` (blockSize bytes, or a sub-range at offsetInBlock) to block `pbn`. */
  write(pbn: number, data: Buffer, offsetInBlock?: number): Promise<void>;
  /**
   * Synchronous read and write, for stores whose I/O is a copy to or from the page cache (the pool file).
   * When present, a FUSE request whose blocks are all known in memory is served without an await (see
   * the fast paths in disk/read.ts and disk/write.ts). Layers offer them whenever their inner store does (the fault layer too,
   * so fault tests run the production path).
   */
  readSync?(pbn: number, dst: Buffer, offsetInBlock?: number): void;
  writeSync?(pbn: number, data: Buffer, offsetInBlock?: number): void;
  /**
   * Write-behind (with readSync): stageBehind takes the data now (a copy: the caller may reuse its buffer at
   * once) and returns a function that queues the write and gives its promise, which settles when the data is
   * written, in order with every other write to the pbn; busy(pbn) is true while a write to pbn is staged or
   * in flight (then readSync must not be used); behindRoom(bytes, fresh) says whether stageBehind may take
   * that much more now (for one request; `fresh`: into newly allocated blocks, without `after`). `after`: the
   * write reaches the bottom only once this settles (a table change that must be in LevelDB first:
   * disk/sums.ts); if it rejects, the write fails like a failed write.
   */
  stageBehind?(pbn: number, data: Buffer, offsetInBlock?: number, after?: Promise<unknown>): () => Promise<void>;
  /**
   * With stageBehind: copy block `from` into block `to` behind, after every write to `from` issued so far
   * and before every write to `to` issued after the call (busy(to) meanwhile); copyRoom() says whether
   * another copy may be started now. `patch`: bytes that replace the copy's at patch.offsetInBlock (taken
   * now, a copy: the caller may reuse its buffer), so that a partial write into a copied block is written
   * with the copy, in the same device write.
   */
  copyBehind?(from: number, to: number, patch?: Patch): Promise<void>;
  copyRoom?(): boolean;
  busy?(pbn: number): boolean;
  behindRoom?(bytes: number, fresh?: boolean): boolean;
  /**
   * sync() done on the calling thread, when it can be done at once: nothing in flight, so the data staged
   * but not yet submitted is written and the file flushed with blocking calls. Returns false, having done
   * nothing, when a write is in flight (then sync()). Why: an fsync with nothing in flight otherwise costs
   * two thread-pool round trips (the write, the flush), each ~70 µs on these VMs, more than the syscalls.
   * Throws what sync() would reject with.
   */
  syncNow?(): boolean;
  /**
   * The pbn is free: drop its data (stores that keep space per block). The pool calls it after the
   * allocator frees the pbn, which for a referenced block happens only once the batch that dropped its last
   * reference has committed; a write to the same pbn issued after discard() must not be undone by it.
   * Losing a discard (a crash) only leaves unreferenced data, which the store removes at open.
   */
  discard?(pbn: number): Promise<void>;
  /**
   * Give back the space past the first `blocks` blocks (none of which is referenced): the pool calls it at a
   * clean close, so the space of blocks freed at the end of a pool file (deleted snapshots and disks) does
   * not stay with the file. Stores without per-file space (LevelBlockStore) leave it out.
   */
  trim?(blocks: number): Promise<void>;
  /**
   * Give the space of these runs ([first pbn, count]) of free blocks back to the host filesystem (punch
   * holes, store/punch.ts); they read as zeros afterwards. The pool keeps the pbns from being allocated until
   * this resolves, and calls it only once the batch that freed them is durable. Rejects when the filesystem
   * cannot punch (the pool then stops asking).
   */
  punch?(runs: [number, number][]): Promise<void>;
  /**
   * The store's file now (pool files): its length, what the next sync() makes durable at least (the disk
   * layer records it after a sync as the file's synced length, so `check` can tell blocks lost from a file
   * that was cut, an error, from data a power cut took before it was synced, allowed); and the space it
   * takes on the host filesystem (st_blocks), which tells whether punching its free blocks is worth it.
   */
  fileStat?(): Promise<{ length: number; allocated: number }>;
  /**
   * A completed write has reached the device (O_DIRECT), not only the page cache: then the device flush of
   * any other file (LevelDB's log) also makes it durable, and the registry may flush both side by side.
   */
  readonly writesThrough?: boolean;
  /** Make every completed write durable (fdatasync). */
  sync(): Promise<void>;
  close(): Promise<void>;
}

/**
 * A bottom that write-behind (writeBehind.ts) can stage runs for: it writes a run's contiguous stretch
 * (several blocks, or part of one, in whole sectors) straight from memory it handed out (allocAligned), on
 * the thread pool or on the calling thread, and flushes on the calling thread. The O_DIRECT pool file.
 */
export interface RunStore extends BlockStore {
  /** writeRun offsets and lengths are multiples of this; other writes go through write(). */
  readonly sector: number;
  allocAligned(bytes: number): Promise<Buffer>;
  readSync(pbn: number, dst: Buffer, offsetInBlock?: number): void;
  readRun(pbn: number, count: number, dst: Buffer): Promise<void>;
  /** Write src (allocAligned memory) at byte offsetInBlock of block pbn onward, over as many blocks as it covers. */
  writeRun(pbn: number, offsetInBlock: number, src: Buffer): Promise<void>;
  /** writeRun on the calling thread, only when none of its blocks is busy(). */
  writeRunSync(pbn: number, offsetInBlock: number, src: Buffer): void;
  /** Copy block `from` into block `to` with `patch` over it (ordered after the writes in flight to both), without staging. */
  copyBlock(from: number, to: number, patch?: Patch): Promise<void>;
  syncNow(): boolean;
}

/** Bytes written over a copied block (copyBehind, copyBlock): data at byte offsetInBlock. */
export interface Patch {
  data: Buffer;
  offsetInBlock: number;
}

/** A patch with its own copy of the bytes: what copyBehind takes at the call (the caller may reuse its buffer). */
export function ownPatch(patch: Patch | undefined): Patch | undefined {
  return patch && { data: Buffer.from(patch.data), offsetInBlock: patch.offsetInBlock };
}

/** Opens the bottom store for one block size (the pool calls it once per block size in use). */
export type BlockStoreFactory = (blockSize: number) => Promise<BlockStore>;
