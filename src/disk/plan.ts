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

/**
 * The live entry that makes a block read as zeros: none, or, where a clone's backing would show through
 * (`overBacking`: the disk is a clone and the block is below its backing's limit), a `zero` entry that hides
 * it. Writes of zeros, discard and restore all write zeros this way.
 */
export function zeroEntry(overBacking: boolean, epoch: number): Entry | undefined {
  return overBacking ? { kind: 'zero', epoch } : undefined;
}

/** Changing `cur` to the zero entry `next` (zeroEntry) changes nothing: the block reads as zeros already. */
export function alreadyZero(cur: Entry | undefined, next: Entry | undefined): boolean {
  return (cur === undefined && next === undefined) || (cur?.kind === 'zero' && next?.kind === 'zero');
}

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

/**
 * The rule, from memory: whether changing lbn (live entry `cur`, null: none) must preserve the old entry for
 * the latest snapshot L; undefined when it depends on L's table and that entry is not in memory.
 */
export function preserveNow(disk: DiskState, L: SnapshotRecord | undefined, cur: Entry | null, lbn: number): boolean | undefined {
  if (!L) return false;
  if (cur) return cur.epoch <= L.epoch;
  const held = disk.snapTable(L.id).peek(lbn);
  return held === undefined ? undefined : held === null;
}

/** The rule, reading L's table when needed. */
export async function needsPreserve(disk: DiskState, L: SnapshotRecord | undefined, cur: Entry | undefined, lbn: number): Promise<boolean> {
  return preserveNow(disk, L, cur ?? null, lbn) ?? (await disk.snapTable(L!.id).get(lbn)) === undefined;
}
