/**
 * The read chain. A view is the live disk (snapIndex -1) or one of its snapshots. A block of snapshot k
 * is found in snapshot k's own table, else in the next newer snapshot's, …, else in the live table; an
 * `inherit` result (or no entry at all) continues into the backing snapshot of a clone, or reads as zeros.
 * The caller holds the view's disk lock for `lbn`; falling into another disk takes that disk's lock too
 * (always in the order clone -> origin, so no cycle).
 */
import type { Context, DiskState } from './context.js';
import type { Entry } from '../meta/keys.js';
import type { Table } from '../meta/table.js';

export type Resolved = { kind: 'data'; pbn: number; blockSize: number; owner: DiskState } | { kind: 'zero' };

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
  if (e?.kind === 'data') return { kind: 'data', pbn: e.pbn, blockSize: disk.blockSize, owner: disk };
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

/** Read the resolved block (or a part of it) into dst. */
export async function readResolved(ctx: Context, r: Resolved, dst: Buffer, offsetInBlock: number): Promise<void> {
  if (r.kind === 'zero') {
    dst.fill(0);
    return;
  }
  const store = await ctx.pool.store(r.blockSize);
  await store.read(r.pbn, dst, offsetInBlock);
}
