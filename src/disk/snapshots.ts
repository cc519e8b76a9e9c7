/**
 * Snapshots, clones and rollback over the read chain (resolve.ts) and the copy-on-write rule (plan.ts).
 * - snapshot: appends a record and bumps the disk's epoch under the disk's gate: constant time, no data.
 * - delete-snapshot: its preserved entries move into the next older snapshot where that one has no entry
 *   for the block (the older one used to read through to them); the rest are freed. One batch.
 * - rollback: every block changed since the target (the union of the target's and newer snapshots'
 *   tables) gets the target's content in a fresh block; the replaced live blocks are preserved for the
 *   latest snapshot as for any write, so newer snapshots stay intact and readable. One batch.
 * - clone: a new disk whose missing blocks read through to the snapshot (a backing file): constant time.
 */
import { randomUUID } from 'node:crypto';
import { DiskState, type Context } from './context.js';
import type { DiskRecord, SnapshotRecord } from '../meta/records.js';
import { checkName } from './names.js';
import { busy, exists } from '../errors.js';
import type { BatchOp } from '../meta/table.js';
import type { Entry } from '../meta/keys.js';
import { resolve, readResolved, chainEntry } from './resolve.js';
import { Transaction } from './commit.js';
import { blocksFor } from '../util/range.js';
import { dropClaim } from './identity.js';

export async function createSnapshot(ctx: Context, d: DiskState, name: string): Promise<SnapshotRecord> {
  checkName(name, 'snapshot');
  if (d.rec.snapshots.some((s) => s.name === name)) throw exists(`snapshot ${d.rec.name}@${name}`);
  return d.gate.exclusively(async () => {
    const snap: SnapshotRecord = {
      id: ctx.seq.snap,
      uid: randomUUID(),
      name,
      epoch: d.rec.epoch,
      created: ctx.clock.tick(),
      size: d.rec.size,
      ...(d.rec.backing ? { backingBlocks: d.rec.backing.limitBlocks } : {}),
    };
    const rec: DiskRecord = { ...d.rec, epoch: d.rec.epoch + 1, snapshots: [...d.rec.snapshots, snap] };
    ctx.seq = { ...ctx.seq, snap: ctx.seq.snap + 1 };
    await ctx.commit([ctx.recordOp(rec), ctx.seqOp()], true);
    d.rec = rec;
    d.held.set(snap.id, 0);
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

export async function deleteSnapshot(ctx: Context, d: DiskState, name: string): Promise<void> {
  const k = d.snapIndex(name);
  const snap = d.rec.snapshots[k]!;
  if ((d.snapOpen.get(snap.id) ?? 0) > 0) throw busy(`snapshot ${d.rec.name}@${name} is open`);
  const clones = clonesOf(ctx, d.rec.id, snap.id);
  if (clones.length) throw busy(`snapshot ${d.rec.name}@${name} has dependent clones: ${clones.join(', ')}`);
  await d.gate.exclusively(async () => {
    await ctx.drain(); // table iteration below reads LevelDB: staged changes must be in it
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
  });
}

/** Every block that changed after snapshot k: the union of the tables of snapshots k..newest. */
export async function changedSince(d: DiskState, k: number): Promise<number[]> {
  const set = new Set<number>();
  for (const s of d.rec.snapshots.slice(k)) for await (const [lbn] of d.snapTable(s.id).entries()) set.add(lbn);
  return [...set].sort((a, b) => a - b);
}

export async function rollback(ctx: Context, d: DiskState, name: string): Promise<void> {
  const k = d.snapIndex(name);
  if (d.isOpen()) throw busy(`disk ${d.rec.name} is open`);
  const target = d.rec.snapshots[k]!;
  await d.gate.exclusively(async () => {
    await dropClaim(ctx, d);
    await ctx.drain();
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
          next = { kind: 'data', pbn, epoch: d.rec.epoch };
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
    const rec: DiskRecord = { ...d.rec, size: target.size };
    if (rec.backing) rec.backing = { ...rec.backing, limitBlocks: target.backingBlocks ?? rec.backing.limitBlocks };
    try {
      // The disk now holds exactly the snapshot: a delta whose base it is applies (disk/identity.ts).
      await tx.commit({ reserved, record: rec, claim: target.uid });
    } finally {
      d.changed();
    }
  });
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
