/**
 * The read chain. A view is the live disk (snapIndex -1) or one of its snapshots. A block of snapshot k
 * is found in snapshot k's own table, else in the next newer snapshot's, …, else in the live table; an
 * `inherit` result (or no entry at all) continues into the backing snapshot of a clone, or reads as zeros.
 * The caller holds the view's disk lock for `lbn`; falling into another disk takes that disk's lock too
 * (always in the order clone -> origin, so no cycle).
 */
import type { Context, DiskState } from './context.js';
import type { DataEntry, Entry } from '../meta/keys.js';
import type { Table } from '../meta/table.js';
import type { BlockStore } from '../store/blockStore.js';
import { covering } from './sums.js';

/** Where a block's content is: data (its entry, with its checksums, in disk `owner` at `lbn`), or zeros. */
export type Resolved = { kind: 'data'; pbn: number; blockSize: number; owner: DiskState; entry: DataEntry; lbn: number } | { kind: 'zero' };

export const ZERO: Resolved = { kind: 'zero' };

/**
 * The tables of a view's read chain, highest priority first: snapshot k's own table, each newer snapshot's,
 * then the live table (the backing of a clone comes after all of them). The one statement of the chain:
 * lookups (chainEntry, chainEntryNow) and scans (viewScan.ts) all walk it. While a rollback to the latest
 * snapshot L still moves L's entries back (`rec.reverting`), the live disk reads as L: L's table, then the
 * live table; each batch of the move leaves that view unchanged (snapshots.ts).
 */
export function chainTables(disk: DiskState, snapIndex: number): Table[] {
  const snaps = disk.rec.snapshots;
  const out: Table[] = [];
  if (snapIndex >= 0) for (let i = snapIndex; i < snaps.length; i++) out.push(disk.snapTable(snaps[i]!.id));
  else if (disk.rec.reverting !== undefined) out.push(disk.snapTable(disk.rec.reverting));
  out.push(disk.live);
  return out;
}

/** The first entry for lbn along the chain of the view, not following the backing. */
export async function chainEntry(disk: DiskState, snapIndex: number, lbn: number): Promise<Entry | undefined> {
  for (const t of chainTables(disk, snapIndex)) {
    const e = await t.get(lbn);
    if (e) return e;
  }
  return undefined;
}

/** chainEntry from memory: the entry, null (none along the chain), or undefined (not all in memory). */
export function chainEntryNow(disk: DiskState, snapIndex: number, lbn: number): Entry | null | undefined {
  for (const t of chainTables(disk, snapIndex)) {
    const e = t.peek(lbn);
    if (e !== null) return e;
  }
  return null;
}

/** How many blocks of a clone's view read through to its backing (0: not a clone). */
export function backingLimit(disk: DiskState, snapIndex: number): number {
  if (!disk.rec.backing) return 0;
  if (snapIndex >= 0) return disk.rec.snapshots[snapIndex]!.backingBlocks ?? disk.rec.backing.limitBlocks;
  return disk.rec.backing.limitBlocks;
}

export async function resolve(ctx: Context, disk: DiskState, snapIndex: number, lbn: number): Promise<Resolved> {
  const e = await chainEntry(disk, snapIndex, lbn);
  if (e?.kind === 'data') return { kind: 'data', pbn: e.pbn, blockSize: disk.blockSize, owner: disk, entry: e, lbn };
  if (e?.kind === 'zero') return ZERO;
  const b = disk.rec.backing;
  if (!b || lbn >= backingLimit(disk, snapIndex)) return ZERO;
  const o = ctx.backingOf(disk);
  if (!o) return ZERO;
  const { origin, index: idx } = o;
  const release = await origin.lock.acquire(lbn);
  try {
    return await resolve(ctx, origin, idx, lbn);
  } finally {
    release();
  }
}

/**
 * Read the resolved block (or a part of it) into dst, verified against its checksums (sums.ts): a damaged
 * block throws CORRUPT and dst is not to be used. Unaligned parts are read as whole sectors.
 */
export async function readResolved(ctx: Context, r: Resolved, dst: Buffer, offsetInBlock: number): Promise<void> {
  if (r.kind === 'zero') {
    dst.fill(0);
    return;
  }
  const store = await ctx.pool.store(r.blockSize);
  const e = r.entry;
  const integ = ctx.integrity;
  if (e.sums === undefined || !integ.enabled) return store.read(r.pbn, dst, offsetInBlock);
  const where = (): string => `disk ${r.owner.rec.name}, block ${r.lbn} (byte ${r.lbn * r.blockSize})`;
  const { start, end } = covering(offsetInBlock, dst.length, r.blockSize);
  if (start === offsetInBlock && end === offsetInBlock + dst.length) {
    await store.read(r.pbn, dst, offsetInBlock);
    integ.verify(e, dst, offsetInBlock, where);
    return;
  }
  const whole = Buffer.allocUnsafe(end - start);
  await store.read(r.pbn, whole, start);
  integ.verify(e, whole, start, where);
  whole.copy(dst, 0, offsetInBlock - start, offsetInBlock - start + dst.length);
}

/**
 * readResolved's synchronous twin for the fast paths: part of e's block into dst from a store that reads
 * synchronously; false when a checksum does not match (the caller takes the async path, which reports it).
 */
export function readEntryNow(ctx: Context, store: BlockStore, e: DataEntry, bs: number, dst: Buffer, offsetInBlock: number): boolean {
  const integ = ctx.integrity;
  if (e.sums === undefined || !integ.enabled) {
    store.readSync!(e.pbn, dst, offsetInBlock);
    return true;
  }
  const { start, end } = covering(offsetInBlock, dst.length, bs);
  if (start === offsetInBlock && end === offsetInBlock + dst.length) {
    store.readSync!(e.pbn, dst, offsetInBlock);
    return integ.probe(e, dst, offsetInBlock);
  }
  const whole = Buffer.allocUnsafe(end - start);
  store.readSync!(e.pbn, whole, start);
  if (!integ.probe(e, whole, start)) return false;
  whole.copy(dst, 0, offsetInBlock - start, offsetInBlock - start + dst.length);
  return true;
}
