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
import { randomUUID } from 'node:crypto';
import { FORMAT_KEY, SEQ_KEY, STORE_MAGIC, STORE_UPGRADES, STORE_VERSION, STORE_VERSION_LEVELDB, STORE_VERSION_RADOS } from './keys.js';
import { BLOCK_STORE_KINDS, type BlockStoreKind, type FormatRecord, type RadosRecord, type SeqRecord } from './records.js';
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
  /** `rados` stores: where the objects are (the conf the caller gave, else the recorded one). */
  rados?: RadosRecord;
  /** The store was created by this open. */
  created?: boolean;
}

/** What a caller may say about a `rados` store: its cluster's ceph.conf and (creating it) its pool. */
export interface RadosOptions {
  conf?: string;
  pool?: string;
  /** A store that lives in the cluster, by its object prefix (`--rados-store`): the registry builds the local database from it. */
  store?: string;
}

/** The store directory's LevelDB as it is (no format record read or written): for rebuilding it. */
export async function openLevel(dir: string): Promise<Db> {
  await mkdir(dir, { recursive: true });
  const db: Db = new Level<string, string>(join(dir, 'db'), { keyEncoding: 'utf8', valueEncoding: 'utf8' });
  await db.open();
  return db;
}

/** ceph.conf when none is given or recorded: where Ceph's own tools look. */
export const DEFAULT_CEPH_CONF = '/etc/ceph/ceph.conf';

/** The format version of each bottom (older versions: STORE_UPGRADES). */
const VERSION_OF: Record<BlockStoreKind, number> = { file: STORE_VERSION, leveldb: STORE_VERSION_LEVELDB, rados: STORE_VERSION_RADOS };
const CURRENT_VERSIONS = new Set(Object.values(VERSION_OF));

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
export async function openDb(dir: string, opts: { blockStore?: BlockStoreKind; upgrade?: boolean; rados?: RadosOptions } = {}): Promise<OpenedDb> {
  const blockStore = opts.blockStore ?? (opts.rados?.pool !== undefined ? 'rados' : undefined);
  const radosFlags = opts.rados?.pool !== undefined || opts.rados?.conf !== undefined || opts.rados?.store !== undefined;
  const notRados = invalid('--ceph-conf and --rados-pool are for --block-store rados');
  if (radosFlags && blockStore !== undefined && blockStore !== 'rados') throw notRados;
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
    const kind = blockStore ?? (radosFlags ? 'rados' : 'file');
    const seq: SeqRecord = { disk: 1, snap: 1, history: 1 };
    const rec: FormatRecord = { magic: STORE_MAGIC, version: VERSION_OF[kind], created: new Date().toISOString(), blockStore: kind };
    if (kind === 'rados') {
      if (!opts.rados?.pool) {
        await db.close();
        throw invalid(`a new rados store needs its Ceph pool: --rados-pool POOL (or -o rados_pool=POOL), and --ceph-conf FILE unless ${DEFAULT_CEPH_CONF}`);
      }
      // The prefix names this store's objects, so that several stores can share a pool.
      rec.rados = { conf: opts.rados.conf ?? DEFAULT_CEPH_CONF, pool: opts.rados.pool, prefix: `vdiskfs.${randomUUID().slice(0, 13)}` };
    }
    await db.batch([
      { type: 'put', key: FORMAT_KEY, value: JSON.stringify(rec) },
      { type: 'put', key: SEQ_KEY, value: JSON.stringify(seq) },
    ], { sync: true });
    return { db, blockStore: kind, created: true, ...(rec.rados ? { rados: rec.rados } : {}) };
  }
  let rec: Partial<FormatRecord>;
  try {
    rec = JSON.parse(format) as typeof rec;
  } catch {
    await db.close();
    throw corrupt(`store ${dir}: unreadable format record`);
  }
  const upgradeTo = STORE_UPGRADES.get(rec.version ?? NaN);
  if (rec.magic !== STORE_MAGIC || (!CURRENT_VERSIONS.has(rec.version ?? NaN) && upgradeTo === undefined)) {
    await db.close();
    throw corrupt(`store ${dir}: format ${rec.magic} version ${rec.version} is not supported (this vdiskfs reads versions ${[...STORE_UPGRADES.keys(), ...CURRENT_VERSIONS].sort((a, b) => a - b).join(', ')})`);
  }
  const version = upgradeTo ?? rec.version!;
  const recorded = rec.blockStore ?? 'file';
  if (!BLOCK_STORE_KINDS.includes(recorded) || VERSION_OF[recorded] !== version || (recorded === 'rados') !== !!rec.rados) {
    await db.close();
    throw corrupt(`store ${dir}: block store '${String(recorded)}' does not match format version ${rec.version}`);
  }
  if (blockStore !== undefined && blockStore !== recorded) {
    await db.close();
    throw blockStoreMismatch(dir, recorded, blockStore);
  }
  if (radosFlags && recorded !== 'rados') {
    await db.close();
    throw notRados;
  }
  if (opts.rados?.store !== undefined && opts.rados.store !== rec.rados!.prefix) {
    await db.close();
    throw invalid(`store ${dir} is the cluster's store ${rec.rados!.prefix}, not ${opts.rados.store}: use another store directory`);
  }
  if (opts.rados?.pool !== undefined && opts.rados.pool !== rec.rados!.pool) {
    await db.close();
    throw invalid(`store ${dir} keeps its blocks in Ceph pool '${rec.rados!.pool}', not '${opts.rados.pool}'`);
  }
  // An older store is upgraded when it is opened for use (not by `check`, which only looks): nothing in it
  // changes but the version, which from now on keeps older vdiskfs builds from misreading what this one writes.
  if (upgradeTo !== undefined && opts.upgrade !== false) {
    const upgraded: FormatRecord = { ...(rec as FormatRecord), version: upgradeTo, blockStore: recorded };
    await db.put(FORMAT_KEY, JSON.stringify(upgraded), { sync: true });
  }
  // A rados store opened with another ceph.conf (another machine's) uses it; the recorded one stays.
  const rados = rec.rados ? { ...rec.rados, ...(opts.rados?.conf !== undefined ? { conf: opts.rados.conf } : {}) } : undefined;
  return { db, blockStore: recorded, ...(rados ? { rados } : {}) };
}

