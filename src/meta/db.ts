/**
 * Opening the LevelDB database of a store directory and checking its format record. A store written by
 * a newer, unknown format version is refused; a fresh directory is initialised. LevelDB's own LOCK file
 * makes a second opener (a second daemon, or the CLI while mounted) fail with LOCKED.
 */
import { Level } from 'level';
import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { FORMAT_KEY, SEQ_KEY, STORE_MAGIC, STORE_VERSION } from './keys.js';
import type { SeqRecord } from './records.js';
import { VdiskError, corrupt } from '../errors.js';

export type Db = Level<string, string>;

export interface MountInfo {
  pid: number;
  mountpoint: string;
}

export const mountInfoPath = (dir: string): string => join(dir, 'mounted.json');

export async function readMountInfo(dir: string): Promise<MountInfo | undefined> {
  try {
    return JSON.parse(await readFile(mountInfoPath(dir), 'utf8')) as MountInfo;
  } catch {
    return undefined;
  }
}

export async function openDb(dir: string): Promise<Db> {
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
    const seq: SeqRecord = { disk: 1, snap: 1, history: 1 };
    await db.batch([
      { type: 'put', key: FORMAT_KEY, value: JSON.stringify({ magic: STORE_MAGIC, version: STORE_VERSION, created: new Date().toISOString() }) },
      { type: 'put', key: SEQ_KEY, value: JSON.stringify(seq) },
    ], { sync: true });
  } else {
    let rec: { magic?: string; version?: number };
    try {
      rec = JSON.parse(format) as typeof rec;
    } catch {
      await db.close();
      throw corrupt(`store ${dir}: unreadable format record`);
    }
    if (rec.magic !== STORE_MAGIC || rec.version !== STORE_VERSION) {
      await db.close();
      throw corrupt(`store ${dir}: format ${rec.magic} version ${rec.version} is not supported (this vdiskfs reads version ${STORE_VERSION})`);
    }
  }
  return db;
}

export async function getOne(db: Db, key: string): Promise<string | undefined> {
  const [v] = await db.getMany([key]);
  return v;
}
