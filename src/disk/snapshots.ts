/**
 * Snapshots, clones and rollback over the read chain (resolve.ts) and the copy-on-write rule (plan.ts).
 * - snapshot: appends a record and bumps the disk's epoch under the disk's gate: constant time, no data.
 *   A received snapshot (a restore, disk/landing.ts) is recorded the same way, under the source's name and
 *   uid (`snapshotRecord`), in the batch that makes the image the disk's content.
 * - delete-snapshot: its preserved entries move into the next older snapshot where that one has no entry
 *   for the block (the older one used to read through to them); the rest are freed. One batch.
 * - rollback to the latest snapshot L (or to an older one with `destroyNewer`, which deletes the newer ones
 *   first, newest first, like `zfs rollback -r`): metadata only, constant time. Every block changed since L
 *   has an entry in L's table (plan.ts preserved it at its first change). One small batch marks the disk
 *   `reverting` to L, and from then on the live disk reads as L (resolve.ts puts L's table first in its
 *   chain); the command returns. A background job (startRevert) then moves L's entries back into the live
 *   table, REVERT_BATCH per batch, freeing the live blocks that replaced them (nothing else references
 *   them); the last batch ends `reverting`. A moved entry gets the epoch of the oldest snapshot that sees it
 *   (so the copy-on-write rule holds for every snapshot that may become the latest later). Reads go on
 *   meanwhile; writes and control commands on the disk wait for the move (DiskState.changing). Every batch
 *   leaves the same view, so a crash or a close in between loses nothing: the next open resumes the move.
 * - rollback to an older snapshot keeping the newer ones: every block changed since the target (the union
 *   of the target's and newer snapshots' tables) gets the target's content in a fresh block; the replaced
 *   live blocks are preserved for the latest snapshot as for any write, so newer snapshots stay intact and
 *   readable. Time proportional to the changed data (blocks are copied: one pbn has one owner). One batch.
 * - clone: a new disk whose missing blocks read through to the snapshot (a backing file): constant time.
 */
import { randomUUID } from 'node:crypto';
import { DiskState, type Context } from './context.js';
import type { DiskRecord, SnapshotRecord } from '../meta/records.js';
import { checkName } from './names.js';
import { busy, exists, VdiskError } from '../errors.js';
import { logger } from '../log.js';
import type { BatchOp } from '../meta/table.js';
import type { Entry } from '../meta/keys.js';
import { resolve, readResolved, chainEntry } from './resolve.js';
import { sealedEntry, sumsIfOn } from './sums.js';
import { Transaction } from './commit.js';
import { blocksFor } from '../util/range.js';
import { claimed, dropClaim } from './identity.js';

const log = logger('snapshots');

/** A snapshot's identity: its own (a new uid) or, for a received snapshot, the source's. */
export interface SnapshotIdentity {
  name: string;
  uid: string;
  created: number;
}

/**
 * The record of a new latest snapshot of `d` as it is now, and the disk record that has it (epoch bumped);
 * the snapshot id is taken from the sequence at once, and the caller commits both with seqOp() in one batch
 * (then calls `snapshotCommitted`).
 */
export function snapshotRecord(ctx: Context, d: DiskState, id: SnapshotIdentity, base: DiskRecord = d.rec): { snap: SnapshotRecord; rec: DiskRecord } {
  const snap: SnapshotRecord = {
    id: ctx.seq.snap,
    uid: id.uid,
    name: id.name,
    epoch: base.epoch,
    created: id.created,
    size: base.size,
    ...(base.backing ? { backingBlocks: base.backing.limitBlocks } : {}),
  };
  ctx.seq = { ...ctx.seq, snap: ctx.seq.snap + 1 };
  return { snap, rec: { ...base, epoch: base.epoch + 1, snapshots: [...base.snapshots, snap] } };
}

export function snapshotCommitted(d: DiskState, snap: SnapshotRecord): void {
  d.held.set(snap.id, 0);
}

/** A snapshot name the disk does not use yet (EXISTS otherwise). */
export function checkNewSnapshotName(d: DiskState, name: string): void {
  checkName(name, 'snapshot');
  if (d.rec.snapshots.some((s) => s.name === name)) throw exists(`snapshot ${d.rec.name}@${name}`);
}

/** `also(snap)`: operations committed in the snapshot's batch (its history line, control/commands.ts). */
export async function createSnapshot(ctx: Context, d: DiskState, name: string, also?: (s: SnapshotRecord) => BatchOp[]): Promise<SnapshotRecord> {
  checkNewSnapshotName(d, name);
  return d.changing(true, async () => {
    const { snap, rec } = snapshotRecord(ctx, d, { name, uid: randomUUID(), created: ctx.clock.tick() });
    // seqOp() after also(): a history line takes a sequence number too, and the last put of the key wins
    await ctx.commit([ctx.recordOp(rec), ...(also?.(snap) ?? []), ctx.seqOp()], true);
    d.rec = rec;
    snapshotCommitted(d, snap);
    return snap;
  });
}

export function clonesOf(ctx: Context, diskId: number, snapId?: number): string[] {
  const out: string[] = [];
  for (const d of ctx.disks.values()) {
    const b = d.rec.backing;
    if (b && b.diskId === diskId && (snapId === undefined || b.snapId === snapId)) out.push(d.rec.name);
  }
  return out;
}

/** Refuse to delete a snapshot while it is open or has clones (BUSY), before anything changes. */
export function checkDeletable(ctx: Context, d: DiskState, snap: SnapshotRecord): void {
  if ((d.snapOpen.get(snap.id) ?? 0) > 0) throw busy(`snapshot ${d.rec.name}@${snap.name} is open`);
  const clones = clonesOf(ctx, d.rec.id, snap.id);
  if (clones.length) throw busy(`snapshot ${d.rec.name}@${snap.name} has dependent clones: ${clones.join(', ')}`);
}

export async function deleteSnapshot(ctx: Context, d: DiskState, name: string): Promise<void> {
  const k = d.snapIndex(name);
  checkDeletable(ctx, d, d.rec.snapshots[k]!);
  await d.changing(true, async () => {
    await ctx.drain(); // table iteration below reads LevelDB: staged changes must be in it
    await deleteSnapshotHeld(ctx, d, d.rec.snapshots[k]!);
  });
}

/** delete-snapshot with the disk's gate held and the pipeline drained. */
async function deleteSnapshotHeld(ctx: Context, d: DiskState, snap: SnapshotRecord): Promise<void> {
  const k = d.rec.snapshots.indexOf(snap);
  const older = k > 0 ? d.rec.snapshots[k - 1]! : undefined;
  const own = d.snapTable(snap.id);
  const ops: BatchOp[] = [];
  const frees: number[] = [];
  const moved: [number, Entry][] = [];
  let movedData = 0;
  for await (const [lbn, e] of own.entries()) {
    if (older && (await d.snapTable(older.id).get(lbn)) === undefined) {
      ops.push(d.snapTable(older.id).putOp(lbn, e));
      moved.push([lbn, e]);
      if (e.kind === 'data') movedData++;
    } else if (e.kind === 'data') frees.push(e.pbn);
    ops.push(own.delOp(lbn));
  }
  const rec: DiskRecord = { ...d.rec, snapshots: d.rec.snapshots.filter((s) => s.id !== snap.id) };
  ops.push(ctx.recordOp(rec));
  await ctx.commit(ops, true);
  d.rec = rec;
  own.forget();
  for (const [lbn, e] of moved) d.snapTable(older!.id).committed(lbn, e);
  for (const pbn of frees) ctx.pool.free(d.blockSize, pbn);
  if (older) d.held.set(older.id, (d.held.get(older.id) ?? 0) + movedData);
  d.held.delete(snap.id);
}

/** Every block that changed after snapshot k: the union of the tables of snapshots k..newest. */
export async function changedSince(d: DiskState, k: number): Promise<number[]> {
  const set = new Set<number>();
  for (const s of d.rec.snapshots.slice(k)) for await (const [lbn] of d.snapTable(s.id).entries()) set.add(lbn);
  return [...set].sort((a, b) => a - b);
}

export interface RollbackOptions {
  /** Delete the snapshots newer than the target first (zfs rollback -r); then the rollback is metadata only. */
  destroyNewer?: boolean;
}

export async function rollback(ctx: Context, d: DiskState, name: string, opts: RollbackOptions = {}): Promise<void> {
  d.snapIndex(name); // NOT_FOUND before waiting
  if (d.isOpen()) throw busy(`disk ${d.rec.name} is open`);
  await d.changing(true, async () => {
    const target = d.rec.snapshots[d.snapIndex(name)]!;
    const destroy = opts.destroyNewer ? d.rec.snapshots.slice(d.rec.snapshots.indexOf(target) + 1) : [];
    for (const s of destroy) checkDeletable(ctx, d, s); // before anything changes
    await dropClaim(ctx, d);
    await ctx.drain();
    try {
      await rollbackHeld(ctx, d, target, destroy, true);
    } finally {
      d.changed();
    }
  });
  // A small move is finished before the command returns (its space is free when `status` is next read).
  if (d.rec.reverting !== undefined && (d.held.get(d.rec.reverting) ?? 0) <= REVERT_BATCH) await d.settled();
}

/**
 * Rollback with the disk's gate held, the claim dropped and the pipeline drained (also the first step of
 * an incremental restore with `force`, disk/landing.ts): delete `destroy` (snapshots newer than the target,
 * newest first), then make the disk hold `target`. `background`: a rollback to the latest snapshot returns
 * once the disk reads as the target and leaves the move of the entries to startRevert (else it is done here).
 */
export async function rollbackHeld(ctx: Context, d: DiskState, target: SnapshotRecord, destroy: SnapshotRecord[], background = false): Promise<void> {
  for (const s of destroy) checkDeletable(ctx, d, s);
  for (const s of [...destroy].reverse()) await deleteSnapshotHeld(ctx, d, s);
  if (d.latest() !== target) return rollbackByCopy(ctx, d, target);
  // The disk now reads as the target and holds exactly it (disk/identity.ts): one small batch.
  const rec: DiskRecord = { ...claimed(recordAt(d, target), target.uid), reverting: target.id };
  await ctx.commit([ctx.recordOp(rec)], true);
  d.rec = rec;
  if (background) startRevert(ctx, d);
  else while (!(await moveBack(ctx, d))) { /* batch after batch, the gate held by the caller */ }
}

/** The disk's record once it holds snapshot `s` again: its size and backing limit. */
function recordAt(d: DiskState, s: SnapshotRecord): DiskRecord {
  const rec: DiskRecord = { ...d.rec, size: s.size };
  if (rec.backing) rec.backing = { ...rec.backing, limitBlocks: s.backingBlocks ?? rec.backing.limitBlocks };
  return rec;
}

/**
 * The epoch a block's entry moved from the latest snapshot back into the live table gets: that of the
 * oldest snapshot reading through to it (the snapshots from the latest back to the first older one with an
 * entry of its own), so that each snapshot that sees the block counts it as shared and none that does not.
 */
async function sharedEpoch(d: DiskState, lbn: number): Promise<number> {
  const snaps = d.rec.snapshots;
  let epoch = snaps[snaps.length - 1]!.epoch;
  for (let i = snaps.length - 2; i >= 0; i--) {
    let e = d.snapTable(snaps[i]!.id).lookup(lbn);
    if (e instanceof Promise) e = await e;
    if (e !== undefined) break;
    epoch = snaps[i]!.epoch;
  }
  return epoch;
}

/** Entries a rollback moves back per batch (its gate held meanwhile: reads wait for one batch at most). */
export const REVERT_BATCH = 4096;

/**
 * Move the next REVERT_BATCH entries of the latest snapshot L's table (`rec.reverting`) back into the live
 * table, freeing the live blocks that replaced them (the live disk's alone: one owner per pbn), in one
 * batch; the batch that moves the last ones also ends `reverting`. True when done. Each batch leaves the
 * live disk reading as L (moved: the live entry is L's; not yet moved: L's table comes first in the chain),
 * so a crash between batches loses nothing and the move resumes at the next open. The caller holds the
 * disk's gate exclusively.
 */
async function moveBack(ctx: Context, d: DiskState): Promise<boolean> {
  const L = d.latest();
  if (d.rec.reverting === undefined) return true;
  if (!L || L.id !== d.rec.reverting) throw new VdiskError('CORRUPT', `disk ${d.rec.name}: rollback to snapshot id ${d.rec.reverting}, which is not its latest snapshot`);
  const own = d.snapTable(L.id);
  const run: [number, Entry][] = [];
  for await (const r of own.runs(REVERT_BATCH)) {
    run.push(...r); // a LevelDB read may return fewer than asked for: fewer than a batch means the end only here
    if (run.length >= REVERT_BATCH) break;
  }
  const ops: BatchOp[] = [];
  const frees: number[] = [];
  const back: [number, Entry | undefined][] = [];
  let allocDelta = 0;
  let heldDelta = 0;
  for (const [lbn, e] of run) {
    let cur = d.live.lookup(lbn);
    if (cur instanceof Promise) cur = await cur;
    if (cur?.kind === 'data') {
      frees.push(cur.pbn);
      allocDelta--;
    }
    let next: Entry | undefined;
    if (e.kind !== 'inherit') {
      const epoch = await sharedEpoch(d, lbn);
      next = e.kind === 'data' ? { ...e, epoch } : { kind: 'zero', epoch }; // the block keeps its checksums
      if (next.kind === 'data') {
        allocDelta++;
        heldDelta--;
      }
    }
    ops.push(next ? d.live.putOp(lbn, next) : d.live.delOp(lbn), own.delOp(lbn));
    back.push([lbn, next]);
  }
  const done = run.length < REVERT_BATCH;
  let rec = d.rec;
  if (done) {
    rec = { ...d.rec };
    delete rec.reverting;
    ops.push(ctx.recordOp(rec));
  }
  await ctx.commit(ops, true);
  d.rec = rec;
  for (const [lbn, e] of back) {
    d.live.committed(lbn, e);
    own.committed(lbn, undefined);
  }
  for (const pbn of frees) ctx.pool.free(d.blockSize, pbn);
  d.allocated += allocDelta;
  d.held.set(L.id, Math.max(0, (d.held.get(L.id) ?? 0) + heldDelta));
  if (done) {
    own.forget();
    d.held.set(L.id, 0);
  }
  return done;
}

/**
 * Finish a rollback in the background (rec.reverting): batch after batch, each under the disk's gate, until
 * done or until close sets `revertStop`. Started by rollback and, for a rollback a crash or a close
 * interrupted, when the store opens. A failure makes the store read-only (ctx.failure) like a failed commit.
 */
export function startRevert(ctx: Context, d: DiskState): void {
  if (d.revert || d.rec.reverting === undefined) return;
  const job = (async () => {
    while (!d.revertStop && !ctx.failure) {
      if (await d.gate.exclusively(() => moveBack(ctx, d))) return;
      await new Promise<void>((r) => setImmediate(r)); // let waiting readers in between batches
    }
  })().catch((e: unknown) => {
    log.error({ disk: d.rec.name, err: e }, 'rollback could not finish; the store is read-only until remounted');
    ctx.failure ??= e instanceof Error ? e : new Error(String(e));
  }).finally(() => {
    d.revert = null;
  });
  d.revert = job;
}

/** Rollback to an older snapshot that keeps the newer ones: the changed blocks are copied (see the header). */
async function rollbackByCopy(ctx: Context, d: DiskState, target: SnapshotRecord): Promise<void> {
  const k = d.rec.snapshots.indexOf(target);
  const bs = d.blockSize;
  const lbns = await changedSince(d, k);
  const tx = new Transaction(ctx, d);
  const reserved: number[] = [];
  const store = await ctx.pool.store(bs);
  const buf = Buffer.allocUnsafe(bs);
  try {
    for (const lbn of lbns) {
      const r = await resolve(ctx, d, k, lbn);
      let next: Entry | undefined;
      if (r.kind === 'data') {
        const pbn = ctx.pool.allocate(bs);
        reserved.push(pbn);
        await readResolved(ctx, r, buf, 0);
        await store.write(pbn, buf);
        next = sealedEntry(ctx, pbn, d.rec.epoch, sumsIfOn(ctx, buf));
      } else {
        const e = await chainEntry(d, k, lbn);
        next = e?.kind === 'zero' ? { kind: 'zero', epoch: d.rec.epoch } : undefined;
      }
      await tx.set(lbn, next);
    }
  } catch (e) {
    for (const pbn of reserved) ctx.pool.free(bs, pbn);
    throw e;
  }
  // The disk now holds exactly the snapshot: a delta whose base it is applies (disk/identity.ts).
  await tx.commit({ reserved, record: recordAt(d, target), claim: target.uid });
}

export async function cloneSnapshot(ctx: Context, d: DiskState, snapName: string, newName: string): Promise<DiskRecord> {
  checkName(newName);
  if (ctx.disks.has(newName)) throw exists(`disk ${newName}`);
  const snap = d.rec.snapshots[d.snapIndex(snapName)]!;
  const rec = ctx.newDiskRecord(newName, snap.size, d.blockSize, { diskId: d.rec.id, snapId: snap.id, limitBlocks: blocksFor(snap.size, d.blockSize) });
  await ctx.commit([ctx.recordOp(rec), ctx.seqOp()], true);
  ctx.disks.set(newName, new DiskState(rec, ctx));
  return rec;
}
