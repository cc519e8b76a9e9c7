/** JSON records kept in the store: the format record, disks with their snapshot chains, history entries, counters. */

/**
 * Where block data lives, fixed when the store is created: `file` — pool files addressed by physical block
 * number (the default); `leveldb` — one LevelDB value per block in the store's database (for comparison);
 * `rados` — one object per block in a Ceph pool (store/radosBlocks.ts).
 */
export type BlockStoreKind = 'file' | 'leveldb' | 'rados';
export const BLOCK_STORE_KINDS: readonly BlockStoreKind[] = ['file', 'leveldb', 'rados'];

/** Where a `rados` store's objects are: the cluster (its ceph.conf), the pool, and the store's object prefix. */
export interface RadosRecord {
  conf: string;
  pool: string;
  prefix: string;
}

/** `meta!format`. Stores created before `blockStore` existed lack it: they are file stores. */
export interface FormatRecord {
  magic: string;
  version: number;
  created?: string;
  blockStore?: BlockStoreKind;
  /** `rados` stores only. */
  rados?: RadosRecord;
}
export interface SnapshotRecord {
  /** Numeric id: key prefix of the snapshot's table. Unique within the store, never reused. */
  id: number;
  /** Globally unique id recorded in backup images. */
  uid: string;
  name: string;
  /** Live entries with epoch <= this were written before the snapshot and are shared with it. */
  epoch: number;
  created: number;
  /** Virtual size of the disk when the snapshot was taken. */
  size: number;
  /** For snapshots of clones: blocks of the backing snapshot visible at snapshot time (see DiskRecord). */
  backingBlocks?: number;
}

export interface DiskRecord {
  id: number;
  name: string;
  size: number;
  blockSize: number;
  created: number;
  /** Current write epoch; incremented by each snapshot. */
  epoch: number;
  /** Oldest first. */
  snapshots: SnapshotRecord[];
  /** A clone reads blocks it never wrote from this snapshot of another disk. */
  backing?: { diskId: number; snapId: number; /** blocks past this read as zeros (after a shrink) */ limitBlocks: number };
  /**
   * uid of the snapshot whose exact content and size this disk holds, set by a restore or an incremental
   * apply and ended before anything else changes the disk (disk/identity.ts, the only code that changes it);
   * incremental images apply only onto the snapshot they were taken from.
   */
  contentUid?: string | null;
  /**
   * Id of the latest snapshot while a rollback to it is still moving its table's entries back into the
   * live table (format version 3/4, snapshots.ts): meanwhile the live disk reads as that snapshot (resolve.ts
   * chainTables) and nothing else changes the disk. Absent otherwise.
   */
  reverting?: number;
}

export interface SeqRecord {
  disk: number;
  snap: number;
  history: number;
}

export interface HistoryRecord {
  time: string;
  command: string;
  result: 'ok' | 'error';
  message?: string;
  code?: string;
}
