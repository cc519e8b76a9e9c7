/**
 * The physical block store: fixed-size blocks addressed by physical block number (pbn). It knows nothing
 * of disks, tables or snapshots. One store serves one block size; the pool keeps one store per block size
 * in use. Implementations: PoolFileStore (block data in a file, the default) and LevelBlockStore (block data
 * inside LevelDB, kept for comparison). Layers (fault injection in tests) wrap an inner store.
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
  /** Write `data` (blockSize bytes, or a sub-range at offsetInBlock) to block `pbn`. */
  write(pbn: number, data: Buffer, offsetInBlock?: number): Promise<void>;
  /** Make every completed write durable (fdatasync). */
  sync(): Promise<void>;
  close(): Promise<void>;
}
