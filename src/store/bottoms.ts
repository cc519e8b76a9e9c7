/**
 * The bottoms a store can keep its block data in, as factories for the Pool. Which one a store uses is
 * fixed when it is created and recorded in its format record (meta/db.ts).
 */
import { join } from 'node:path';
import type { BlockStoreFactory } from './blockStore.js';
import { PoolFileStore } from './poolFile.js';
import { DirectPoolFileStore } from './directPool.js';
import { ReadaheadStore } from './readahead.js';
import { LevelBlockStore } from './levelBlocks.js';
import type { Db } from '../meta/db.js';
import type { BlockStoreKind } from '../meta/records.js';

/**
 * `pool-<blockSize>.dat` files in the store directory, read and written with O_DIRECT where the store's
 * filesystem supports it (directPool.ts, with the readahead layer over it: readahead.ts), else through the
 * page cache (poolFile.ts, which warms the kernel's cache for sequential readers itself).
 * VDISKFS_POOL_IO=buffered asks for the page cache anyway (to measure one against the other).
 */
export const poolFiles =
  (dir: string): BlockStoreFactory =>
  async (blockSize) => {
    const path = join(dir, `pool-${blockSize}.dat`);
    const direct = process.env.VDISKFS_POOL_IO === 'buffered' ? null : await DirectPoolFileStore.open(path, blockSize);
    return direct ? ReadaheadStore.over(direct) : PoolFileStore.open(path, blockSize);
  };

/** Values in the store's LevelDB database (shares the registry's handle; the registry closes it). */
export const levelBlocks =
  (db: Db): BlockStoreFactory =>
  (blockSize) =>
    Promise.resolve(new LevelBlockStore(db, blockSize));

export function bottomFactory(kind: BlockStoreKind, dir: string, db: Db): BlockStoreFactory {
  return kind === 'leveldb' ? levelBlocks(db) : poolFiles(dir);
}
