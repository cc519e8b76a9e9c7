/**
 * Commands on a store without going through FUSE: open the store, run, close. When the store is mounted
 * (LevelDB is locked by the daemon), control commands go through the mount's control file instead, and
 * read-only queries read its status files; anything else fails naming the mountpoint.
 */
import { appendFile, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Registry } from '../disk/registry.js';
import { readMountInfo } from '../meta/db.js';
import { isVdiskError, VdiskError, type ErrorCode } from '../errors.js';
import { runLine } from '../control/commands.js';

export async function withRegistry<T>(dir: string, fn: (reg: Registry) => Promise<T>, poolSize?: number): Promise<T> {
  const reg = await Registry.open({ dir, ...(poolSize !== undefined ? { poolSize } : {}) });
  try {
    return await fn(reg);
  } finally {
    await reg.close();
  }
}

const ERRNO_CODES: Record<string, ErrorCode> = { EINVAL: 'INVALID', ENOENT: 'NOT_FOUND', EEXIST: 'EXISTS', EBUSY: 'BUSY', ENOSPC: 'NO_SPACE', EROFS: 'READ_ONLY', EIO: 'IO' };

/** Run a control line on the store, directly or through the mount that holds it. */
export async function runControl(dir: string, line: string): Promise<string> {
  try {
    return await withRegistry(dir, (reg) => runLine(reg, line));
  } catch (e) {
    if (!isVdiskError(e, 'LOCKED')) throw e;
    const info = await readMountInfo(dir);
    if (!info) throw e;
    const vdisk = join(info.mountpoint, '.vdisk');
    try {
      await appendFile(join(vdisk, 'ctl'), line + '\n');
      return `done through the mount at ${info.mountpoint}`;
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code ?? 'EIO';
      const hist = await readFile(join(vdisk, 'history'), 'utf8').catch(() => '');
      const last = hist.trimEnd().split('\n').pop()?.split('\t')[3];
      throw new VdiskError(ERRNO_CODES[code] ?? 'IO', last ?? `${code} from ${info.mountpoint}`);
    }
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
