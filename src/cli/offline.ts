/**
 * Commands on a store without going through FUSE: open the store, run, close. When the store is mounted
 * (LevelDB is locked by the daemon), control commands go through the mount's control file instead
 * (viaMount.ts: with the daemon's typed reply), and read-only queries read its status files; anything else
 * fails naming the mountpoint.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Registry } from '../disk/registry.js';
import { blockStoreMismatch, readMountInfo } from '../meta/db.js';
import type { BlockStoreKind } from '../meta/records.js';
import { isVdiskError } from '../errors.js';
import { controlThroughMount } from './viaMount.js';
import { runLine } from '../control/commands.js';
import type { StoreStatus } from '../control/status.js';

/** Help for --block-store on the commands that may create the store (mount, create, restore). */
export const BLOCK_STORE_HELP = "where a new store keeps block data: 'file' (pool files, default), 'leveldb' (values in the store's LevelDB) or 'rados' (objects in a Ceph pool: mount with --rados-pool); an existing store must match";

export interface StoreOptions {
  poolSize?: number;
  /** --block-store: the bottom a new store gets; an existing (or mounted) store must have it. */
  blockStore?: BlockStoreKind;
}

export async function withRegistry<T>(dir: string, fn: (reg: Registry) => Promise<T>, opts: StoreOptions = {}): Promise<T> {
  const reg = await Registry.open({ dir, ...opts });
  try {
    return await fn(reg);
  } finally {
    await reg.close();
  }
}

/**
 * A --block-store given for a store that a daemon serves: the mount's status.json says which bottom the
 * store has (absent in daemons older than the field: those serve only file stores).
 */
export async function checkMountedBlockStore(dir: string, vdiskDir: string, wanted: BlockStoreKind | undefined): Promise<void> {
  if (wanted === undefined) return;
  const st = JSON.parse(await readFile(join(vdiskDir, 'status.json'), 'utf8')) as Partial<StoreStatus>;
  const recorded = st.pool?.blockStore ?? 'file';
  if (recorded !== wanted) throw blockStoreMismatch(dir, recorded, wanted);
}

/** Run a control line on the store, directly or through the mount that holds it. */
export async function runControl(dir: string, line: string, opts: StoreOptions = {}): Promise<string> {
  try {
    return await withRegistry(dir, (reg) => runLine(reg, line), opts);
  } catch (e) {
    if (!isVdiskError(e, 'LOCKED')) throw e;
    const info = await readMountInfo(dir);
    if (!info) throw e;
    const vdisk = join(info.mountpoint, '.vdisk');
    await checkMountedBlockStore(dir, vdisk, opts.blockStore);
    return await controlThroughMount(vdisk, line);
  }
}

/** Read a rendered status file from the mount when the store is mounted, else compute it. */
export async function query<T>(dir: string, direct: (reg: Registry) => Promise<T> | T, viaMount: (vdiskDir: string) => Promise<T>): Promise<T> {
  try {
    return await withRegistry(dir, async (reg) => direct(reg));
  } catch (e) {
    if (!isVdiskError(e, 'LOCKED')) throw e;
    const info = await readMountInfo(dir);
    if (!info) throw e;
    return viaMount(join(info.mountpoint, '.vdisk'));
  }
}
