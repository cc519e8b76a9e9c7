/**
 * The bottoms a store can keep its block data in, as factories for the Pool. Which one a store uses is
 * fixed when it is created and recorded in its format record (meta/db.ts).
 */
import { join } from 'node:path';
import type { BlockStore, BlockStoreFactory } from './blockStore.js';
import { PoolFileStore } from './poolFile.js';
import { DirectPoolFileStore } from './directPool.js';
import { ReadaheadStore } from './readahead.js';
import { WriteBehindStore } from './writeBehind.js';
import { LevelBlockStore } from './levelBlocks.js';
import { RadosBlockStore } from './radosBlocks.js';
import type { Db } from '../meta/db.js';
import type { BlockStoreKind, RadosRecord } from '../meta/records.js';

/**
 * `pool-<blockSize>.dat` files in the store directory, read and written with O_DIRECT where the store's
 * filesystem supports it (directPool.ts, with write-behind and readahead as layers over it: directStack),
 * else through the page cache (poolFile.ts, which writes behind and warms the kernel's cache for sequential
 * readers itself). VDISKFS_POOL_IO=buffered asks for the page cache anyway (to measure one against the other).
 */
export const poolFiles =
  (dir: string): BlockStoreFactory =>
  async (blockSize) => {
    const path = join(dir, `pool-${blockSize}.dat`);
    const direct = process.env.VDISKFS_POOL_IO === 'buffered' ? null : await DirectPoolFileStore.open(path, blockSize);
    return direct ? directStack(direct) : PoolFileStore.open(path, blockSize);
  };

/**
 * The O_DIRECT pool file's stack, s3backer-style: readahead (readahead.ts) over write-behind (writeBehind.ts)
 * over the plain file. Readahead sits on top so that every write drops the chunks it overlaps before it is
 * staged, and its chunk reads go through write-behind's readRun, which waits for writes in flight.
 */
export async function directStack(direct: DirectPoolFileStore): Promise<BlockStore> {
  return ReadaheadStore.over(await WriteBehindStore.over(direct));
}

/** Values in the store's LevelDB database (shares the registry's handle; the registry closes it). */
export const levelBlocks =
  (db: Db): BlockStoreFactory =>
  (blockSize) =>
    Promise.resolve(new LevelBlockStore(db, blockSize));

/** Objects in a Ceph pool (radosBlocks.ts), named by the store's prefix. */
export const radosObjects =
  (rados: RadosRecord): BlockStoreFactory =>
  (blockSize) =>
    RadosBlockStore.open(rados, blockSize);

export function bottomFactory(kind: BlockStoreKind, dir: string, db: Db, rados?: RadosRecord): BlockStoreFactory {
  if (kind === 'rados') {
    if (!rados) throw new Error('a rados store without its rados record');
    return radosObjects(rados);
  }
  return kind === 'leveldb' ? levelBlocks(db) : poolFiles(dir);
}
