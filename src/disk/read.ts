/**
 * Reading a view (the live disk, or a snapshot) of a disk. Concurrency: reads enter the disk's gate shared
 * and lock their blocks, so a block freed by a concurrent write is never read.
 */
import type { Context, DiskState } from './context.js';
import { resolve, readResolved, chainEntryNow, readEntryNow } from './resolve.js';
import type { DataEntry } from '../meta/keys.js';
import { splitRange } from '../util/range.js';
import { invalid } from '../errors.js';

/** Read from the live disk (snapIndex -1) or a snapshot into dst; returns bytes read (short at the end). */
export async function readView(ctx: Context, disk: DiskState, snapIndex: number, offset: number, dst: Buffer): Promise<number> {
  if (!Number.isSafeInteger(offset) || offset < 0) throw invalid(`bad offset ${offset}`);
  const size = snapIndex >= 0 ? disk.rec.snapshots[snapIndex]!.size : disk.rec.size;
  if (offset >= size) return 0;
  const length = Math.min(dst.length, size - offset);
  const pieces = splitRange(offset, length, disk.blockSize);
  await disk.gate.run(async () => {
    await Promise.all(
      pieces.map(async (p) => {
        const release = await disk.lock.acquire(p.lbn);
        try {
          const r = await resolve(ctx, disk, snapIndex, p.lbn);
          await readResolved(ctx, r, dst.subarray(p.bufOffset, p.bufOffset + p.length), p.offsetInBlock);
        } finally {
          release();
        }
      }),
    );
  });
  return length;
}

/**
 * Fast paths. A request whose blocks nobody holds a lock on, whose table entries are all in memory and whose
 * store can read synchronously and write behind (the pool file) is served without a single await: nothing
 * can run in between on the event loop, so it needs neither the gate nor the block locks, and it skips the
 * promise machinery that cost as much as the I/O itself for a 128 KiB FUSE request (see README,
 * Performance). Writes are written behind (store/writeBehind.ts, store/poolFile.ts): the batch that
 * references a new block waits for its write. Anything else — an entry not cached, a locked block, a block
 * with a write in flight or a readahead read on its way (for reads), a control operation at the gate, a
 * clone's backing, a partial write that must merge, zeros that may free a block, a full pool, a long commit
 * backlog or write-behind queue — returns undefined and the caller takes the async path, which handles
 * every case (and reports every error).
 */

/** readView without awaiting, or undefined when the async path is needed. */
export function readViewNow(ctx: Context, disk: DiskState, snapIndex: number, offset: number, dst: Buffer): number | undefined {
  if (disk.gate.closed || !Number.isSafeInteger(offset) || offset < 0) return undefined;
  const size = snapIndex >= 0 ? disk.rec.snapshots[snapIndex]!.size : disk.rec.size;
  if (offset >= size) return 0;
  const length = Math.min(dst.length, size - offset);
  const pieces = splitRange(offset, length, disk.blockSize);
  const entries: (DataEntry | null)[] = [];
  for (const p of pieces) {
    if (disk.lock.isLocked(p.lbn)) return undefined;
    const e = chainEntryNow(disk, snapIndex, p.lbn);
    if (e === undefined) return undefined;
    if (e?.kind === 'data') entries.push(e);
    else if (e?.kind === 'zero' || !disk.rec.backing) entries.push(null);
    else return undefined; // read through to the backing snapshot
  }
  const store = ctx.pool.storeNow(disk.blockSize);
  if (entries.some((e) => e && (!store?.readSync || store.busy?.(e.pbn)))) return undefined;
  for (let i = 0; i < pieces.length; i++) {
    const p = pieces[i]!;
    const part = dst.subarray(p.bufOffset, p.bufOffset + p.length);
    const e = entries[i]!;
    if (!e) part.fill(0);
    else if (!readEntryNow(ctx, store!, e, disk.blockSize, part, p.offsetInBlock)) return undefined; // damaged: the async path reports it
  }
  return length;
}
