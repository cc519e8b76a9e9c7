/**
 * What a disk provably holds: the uid of the snapshot whose exact bytes and size it has, recorded by a
 * restore (full or incremental), or by a rollback to one of the disk's own snapshots, as
 * `DiskRecord.contentUid`. An incremental image applies only onto a disk that holds its base, so a claim
 * that outlives a change to the disk would let a delta land on the wrong bytes and report success. The rule, kept here and only here:
 *
 * - `dropClaim` ends the claim, durably (a synced batch), and every path that changes a disk's content or
 *   size awaits it before its first byte reaches the pool or the tables: writes (including zero writes and
 *   discards), resize, rollback, and a restore into the disk (which may fail half-way: it then leaves no
 *   claim). Durable first, because a write reaches the pool before its table batch commits: a crash in
 *   between must not leave changed blocks under a claim that still stands.
 * - `claimed` is the one way to set a claim (Transaction's `claim` option): a restore's final batch, which
 *   makes the image's blocks the disk's content, or a rollback's, which makes the snapshot's; either records
 *   the claim atomically with the change.
 * - `assertUnclaimed` is the tripwire at the places where content changes (the write and commit paths in
 *   write.ts, commit.ts): a path that forgot `dropClaim` fails loudly instead of producing a wrong restore.
 *
 * Concurrency: callers hold the disk's gate (writes shared, control operations exclusively). Concurrent
 * writers share one drop in flight (`DiskState.claimDrop`), and none of them proceeds before it is durable.
 */
import type { Context, DiskState } from './context.js';
import type { DiskRecord } from '../meta/records.js';
import { VdiskError } from '../errors.js';

/** End the disk's claim to hold a restored image, durably; resolves at once when it has none. */
export function dropClaim(ctx: Context, d: DiskState): Promise<void> {
  if (d.claimDrop) return d.claimDrop;
  if (d.rec.contentUid == null) return Promise.resolve();
  const rec: DiskRecord = { ...d.rec, contentUid: null };
  // In memory at once (the record never claims more than the store does); the writers wait for the batch.
  d.rec = rec;
  d.claimDrop = ctx.commit([ctx.recordOp(rec)], true).finally(() => {
    d.claimDrop = null;
  });
  return d.claimDrop;
}

/** The record of a disk that now holds snapshot `uid`'s content: only a restore's final batch writes it. */
export function claimed(rec: DiskRecord, uid: string): DiskRecord {
  return { ...rec, contentUid: uid };
}

/** The uid of the snapshot whose content the disk holds, or null. */
export function claimOf(d: DiskState): string | null {
  return d.rec.contentUid ?? null;
}

/**
 * The uids of the snapshots whose exact content the disk holds: its claim, and its latest snapshot L when
 * nothing changed since L. The latter is read off L's table: every change to a block after L preserves L's
 * view of it there first (disk/plan.ts: redirect-on-write, so L's blocks are never overwritten in place, also
 * not by a write cut short by a crash), so an empty table, the same size and the same backing limit mean the
 * disk still is L. Callers that act on the answer hold the disk's gate exclusively (no write in between).
 */
export async function heldContent(d: DiskState): Promise<string[]> {
  const held: string[] = [];
  const claim = claimOf(d);
  if (claim !== null) held.push(claim);
  const L = d.latest();
  if (!L || L.uid === claim || d.claimDrop !== null || d.rec.size !== L.size) return held;
  if (d.rec.backing && L.backingBlocks !== undefined && d.rec.backing.limitBlocks !== L.backingBlocks) return held;
  for await (const _ of d.snapTable(L.id).current()) return held;
  return [...held, L.uid];
}

/** True while the disk claims an image or the batch ending its claim is in flight: no content may change. */
export function claimStands(d: DiskState): boolean {
  return d.rec.contentUid != null || d.claimDrop !== null;
}

/** Content is about to change: the claim must have been dropped (and made durable) first. */
export function assertUnclaimed(d: DiskState, what: string): void {
  if (claimStands(d)) {
    throw new VdiskError('IO', `internal error: ${what} on disk ${d.rec.name} while it still claims to hold image ${d.rec.contentUid ?? '(drop in flight)'}`);
  }
}
