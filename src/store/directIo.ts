/**
 * O_DIRECT I/O for the pool file (directPool.ts): offsets, lengths and memory aligned to the device's
 * sector; whole-buffer reads and writes on the thread pool or on the calling thread; and arenas of memory
 * whose aligned start is found by probing (Node cannot ask for an address).
 */
import { open, unlink, type FileHandle } from 'node:fs/promises';
import { constants, readSync, writeSync, read as readCb, write as writeCb } from 'node:fs';
import { directMemory } from '../util/memory.js';

export const SECTOR = 512;
const PROBE_BYTES = 64 * 1024;

export const floorTo = (n: number, a: number): number => Math.floor(n / a) * a;
export const ceilTo = (n: number, a: number): number => Math.ceil(n / a) * a;
export const aligned = (pos: number, len: number): boolean => pos % SECTOR === 0 && len % SECTOR === 0;

/** Blocking-free O_DIRECT write or read of a whole buffer at pos (short reads past the end are zero-filled). */
export function ioAll(kind: 'read' | 'write', fd: number, buf: Buffer, pos: number): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const step = (done: number): void => {
      if (done >= buf.length) return resolve();
      const cb = (err: Error | null, n: number): void => {
        if (err) return reject(err);
        if (n === 0) {
          if (kind === 'read') {
            buf.fill(0, done);
            return resolve();
          }
          return reject(new Error(`pool write made no progress at byte ${pos + done}`));
        }
        step(done + n);
      };
      try {
        if (kind === 'read') readCb(fd, buf, done, buf.length - done, pos + done, cb);
        else writeCb(fd, buf, done, buf.length - done, pos + done, cb);
      } catch (e) {
        reject(e as Error); // an argument the call refuses outright (a closed descriptor)
      }
    };
    step(0);
  });
}

export function readAllSync(fd: number, buf: Buffer, pos: number): void {
  let done = 0;
  while (done < buf.length) {
    const n = readSync(fd, buf, done, buf.length - done, pos + done);
    if (n === 0) {
      buf.fill(0, done);
      return;
    }
    done += n;
  }
}

export function writeAllSync(fd: number, buf: Buffer, pos: number): void {
  let done = 0;
  while (done < buf.length) done += writeSync(fd, buf, done, buf.length - done, pos + done);
}

/**
 * An arena of `size` bytes whose start is sector-aligned (page-aligned where util/memory.ts can give it), or
 * null when the filesystem of `near` refuses O_DIRECT. Checked by writing PROBE_BYTES with O_DIRECT to a
 * scratch file (util/memory.ts directMemory).
 */
export async function alignedArena(near: string, size: number): Promise<Buffer | null> {
  const probe = `${near}.probe`;
  let fh: FileHandle;
  try {
    fh = await open(probe, constants.O_RDWR | constants.O_CREAT | constants.O_TRUNC | constants.O_DIRECT, 0o600);
  } catch {
    return null;
  }
  try {
    return await directMemory(size, PROBE_BYTES, SECTOR, (at) => fh.write(at, 0, at.length, 0));
  } finally {
    await fh.close().catch(() => undefined);
    await unlink(probe).catch(() => undefined);
  }
}
