/**
 * Copy-on-write decisions. Invariant: every physical block is referenced by exactly one table entry (a live
 * entry or one snapshot's preserved entry). A live entry written after the latest snapshot L has
 * epoch > L.epoch and belongs to the live disk alone: it is overwritten in place. Otherwise the block is
 * still part of L's view, so the first change to it after L moves the old entry into L's table (preserve)
 * and the new data goes to a fresh block (redirect-on-write). A missing live entry (a hole) is preserved
 * as `inherit` unless L already recorded this block.
 */
import type { DiskState } from './context.js';
import type { Entry } from '../meta/keys.js';
import type { SnapshotRecord } from '../meta/records.js';

export interface Change {
  lbn: number;
  /** Live entry before the change (undefined: none). */
  cur: Entry | undefined;
  /** Live entry after the change (undefined: remove it). */
  next: Entry | undefined;
  /** Move `cur` into the latest snapshot's table instead of freeing it. */
  preserve: boolean;
  /** New block content to write to a fresh physical block (when next is data). */
  block?: Buffer;
}

export async function needsPreserve(disk: DiskState, L: SnapshotRecord | undefined, cur: Entry | undefined, lbn: number): Promise<boolean> {
  if (!L) return false;
  if (cur) return cur.epoch <= L.epoch;
  return (await disk.snapTable(L.id).get(lbn)) === undefined;
}
