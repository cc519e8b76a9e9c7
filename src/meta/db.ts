/**
 * Opening the LevelDB database of a store directory and checking its format record. A store written by
 * a newer, unknown format version is refused; a fresh directory is initialised. LevelDB's own LOCK file
 * makes a second opener (a second daemon, or the CLI while mounted) fail with LOCKED.
 * The format record also says where block data lives (`blockStore`, fixed at creation): a request for the
 * other bottom is refused rather than ignored, because opening a LevelDB store with pool files (or the
 * reverse) would read every block as zeros.
 */
import { Level } from 'level';
import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { FORMAT_KEY, SEQ_KEY, STORE_MAGIC, STORE_UPGRADES, STORE_VERSION, STORE_VERSION_LEVELDB } from './keys.js';
import { BLOCK_STORE_KINDS, type BlockStoreKind, type FormatRecord, type SeqRecord } from './records.js';
import { VdiskError, corrupt, invalid } from '../errors.js';

export type Db = Level<string, string>;

export interface MountInfo {
  pid: number;
  mountpoint: string;
}

export const mountInfoPath = (dir: string): string => join(dir, 'mounted.json');
/** The daemon's log (pino JSON lines); SIGHUP reopens it at this path. */
export const logPath = (dir: string): string => join(dir, 'vdiskfs.log');

export async function readMountInfo(dir: string): Promise<MountInfo | undefined> {
  try {
    return JSON.parse(await readFile(mountInfoPath(dir), 'utf8')) as MountInfo;
  } catch {
    return undefined;
  }
}

export interface OpenedDb {
  db: Db;
  /** The bottom recorded in the store's format record (`file` when the record predates the field). */
  blockStore: BlockStoreKind;
}

/** A --block-store / block_store= value. */
export function parseBlockStore(value: string): BlockStoreKind {
  const kind = BLOCK_STORE_KINDS.find((k) => k === value);
  if (!kind) throw invalid(`unknown block store '${value}' (use ${BLOCK_STORE_KINDS.join(' or ')})`);
  return kind;
}

/** The error for asking a store for another bottom than the one it was created with. */
export function blockStoreMismatch(dir: string, recorded: BlockStoreKind, wanted: BlockStoreKind): VdiskError {
  return invalid(`store ${dir} keeps its block data in '${recorded}' (fixed when it was created), not '${wanted}': drop --block-store ${wanted} or use a new store directory`);
}

/**
 * Open (or initialise) the store's database. `blockStore` is the bottom the caller asks for: a new store
 * is created with it (default `file`), an existing one must have been created with it.
 */
export async function openDb(dir: string, opts: { blockStore?: BlockStoreKind; upgrade?: boolean } = {}): Promise<OpenedDb> {
  await mkdir(dir, { recursive: true });
  const db: Db = new Level<string, string>(join(dir, 'db'), { keyEncoding: 'utf8', valueEncoding: 'utf8' });
  try {
    await db.open();
  } catch (e) {
    const cause = (e as { cause?: { code?: string } }).cause;
    if (cause?.code === 'LEVEL_LOCKED') {
      const info = await readMountInfo(dir);
      const where = info ? ` (mounted at ${info.mountpoint} by pid ${info.pid})` : '';
      throw new VdiskError('LOCKED', `store ${dir} is in use by another vdiskfs process${where}`);
    }
    throw new VdiskError('IO', `cannot open store ${dir}: ${(e as Error).message}`, { cause: e });
  }
  const [format] = await db.getMany([FORMAT_KEY]);
  if (format === undefined) {
    const blockStore = opts.blockStore ?? 'file';
    const seq: SeqRecord = { disk: 1, snap: 1, history: 1 };
    const version = blockStore === 'leveldb' ? STORE_VERSION_LEVELDB : STORE_VERSION;
    const rec: FormatRecord = { magic: STORE_MAGIC, version, created: new Date().toISOString(), blockStore };
    await db.batch([
      { type: 'put', key: FORMAT_KEY, value: JSON.stringify(rec) },
      { type: 'put', key: SEQ_KEY, value: JSON.stringify(seq) },
    ], { sync: true });
    return { db, blockStore };
  }
  let rec: Partial<FormatRecord>;
  try {
    rec = JSON.parse(format) as typeof rec;
  } catch {
    await db.close();
    throw corrupt(`store ${dir}: unreadable format record`);
  }
  const upgradeTo = STORE_UPGRADES.get(rec.version ?? NaN);
  if (rec.magic !== STORE_MAGIC || (rec.version !== STORE_VERSION && rec.version !== STORE_VERSION_LEVELDB && upgradeTo === undefined)) {
    await db.close();
    throw corrupt(`store ${dir}: format ${rec.magic} version ${rec.version} is not supported (this vdiskfs reads versions ${[...STORE_UPGRADES.keys(), STORE_VERSION, STORE_VERSION_LEVELDB].sort((a, b) => a - b).join(', ')})`);
  }
  const version = upgradeTo ?? rec.version!;
  const recorded = rec.blockStore ?? 'file';
  if (!BLOCK_STORE_KINDS.includes(recorded) || (recorded === 'leveldb') !== (version === STORE_VERSION_LEVELDB)) {
    await db.close();
    throw corrupt(`store ${dir}: block store '${String(recorded)}' does not match format version ${rec.version}`);
  }
  if (opts.blockStore !== undefined && opts.blockStore !== recorded) {
    await db.close();
    throw blockStoreMismatch(dir, recorded, opts.blockStore);
  }
  // An older store is upgraded when it is opened for use (not by `check`, which only looks): nothing in it
  // changes but the version, which from now on keeps older vdiskfs builds from misreading what this one writes.
  if (upgradeTo !== undefined && opts.upgrade !== false) {
    const upgraded: FormatRecord = { ...(rec as FormatRecord), version: upgradeTo, blockStore: recorded };
    await db.put(FORMAT_KEY, JSON.stringify(upgraded), { sync: true });
  }
  return { db, blockStore: recorded };
}

