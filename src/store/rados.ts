/**
 * The librados binding (native/rados, an N-API addon whose calls run on Node's thread pool), the one place
 * vdiskfs loads it: block data (radosBlocks.ts) and the store's metadata in the cluster (radosMeta.ts).
 * Built at install time only where librados-dev is present; without it, using it says how to get it.
 */
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { VdiskError } from '../errors.js';

export interface RadosNative {
  connect(conf: string, pool: string): Promise<unknown>;
  read(h: unknown, obj: string, buf: Buffer, off: number): Promise<number>;
  write(h: unknown, obj: string, buf: Buffer, off: number): Promise<void>;
  writeFull(h: unknown, obj: string, buf: Buffer): Promise<void>;
  remove(h: unknown, obj: string): Promise<void>;
  close(h: unknown): Promise<void>;
  /** The object's size, -1 when there is none. */
  size(h: unknown, obj: string): Promise<number>;
  /** An exclusive lock on obj that lapses after `seconds` unless taken again with renew (EBUSY: held by another). */
  lock(h: unknown, obj: string, name: string, cookie: string, description: string, seconds: number, renew: boolean): Promise<void>;
  unlock(h: unknown, obj: string, name: string, cookie: string): Promise<void>;
  /** The names of the pool's objects that start with prefix (lists the whole pool). */
  list(h: unknown, prefix: string): Promise<string[]>;
}

const ADDON = join(dirname(fileURLToPath(import.meta.url)), '../../native/rados/build/Release/vdiskfs_rados.node');

let native: RadosNative | undefined;

/** The addon, or INVALID saying how to build it. */
export function radosNative(): RadosNative {
  if (native) return native;
  try {
    native = createRequire(import.meta.url)(ADDON) as RadosNative;
    return native;
  } catch (e) {
    throw new VdiskError('INVALID', `rados block store not available: its addon (native/rados) is not built; it needs librados-dev: run scripts/setup.sh --ceph, then npm ci (or npm run build:rados) (${(e as Error).message.split('\n')[0]})`);
  }
}

/** Connect to `pool` of the cluster `conf` describes; IO naming both when it cannot. */
export async function radosConnect(conf: string, pool: string): Promise<{ r: RadosNative; h: unknown }> {
  const r = radosNative();
  try {
    return { r, h: await r.connect(conf, pool) };
  } catch (e) {
    throw new VdiskError('IO', `cannot connect to Ceph pool ${pool} with ${conf}: ${(e as Error).message}`, { cause: e });
  }
}
