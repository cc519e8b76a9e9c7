/**
 * The table transaction: the one way a disk's tables change. Writes, discard, rollback, resize and restore
 * plan their changes here with the copy-on-write rule of plan.ts (a block the latest snapshot still sees is
 * moved into its table, not freed) and commit them in one batch, with named options:
 * - `reserved`: the fresh physical blocks the changes point at, freed again if the batch fails;
 * - `record`: the disk's new record (size, backing limit), committed in the same batch;
 * - `claim`: the uid of the snapshot whose exact content the disk holds afterwards (only a restore says
 *   so: disk/identity.ts); without it the change keeps no claim, which every path ended durably before;
 * - `wait`: false for plain writes, acknowledged once staged (durability comes from fsync).
 * Staged changes are visible to every later read and write at once; the batch goes through the ordered
 * group-commit pipeline (Context.commit); blocks the changes stop referencing are freed only after it
 * commits; a failed batch unstages everything, the record included.
 */
import { MAX_BACKLOG, type Context, type DiskState } from './context.js';
import type { DataEntry, Entry } from '../meta/keys.js';
import type { Table } from '../meta/table.js';
import type { BatchOp } from '../meta/table.js';
import type { DiskRecord, SnapshotRecord } from '../meta/records.js';
import { alreadyZero, needsPreserve, zeroEntry, type Change } from './plan.js';
import { assertUnclaimed, claimed } from './identity.js';
import { logger } from '../log.js';

const log = logger('commit');

export interface CommitOptions {
  reserved?: number[];
  record?: DiskRecord;
  claim?: string;
  /** Default true: resolve once the batch is in LevelDB. */
  wait?: boolean;
  /** Pool writes the new entries point at, still written behind: the batch waits for them. */
  ready?: Promise<unknown>;
  /** More operations for the same batch (the sequence record of a snapshot the record adds). */
  extra?: BatchOp[];
}

export class Transaction {
  /** The latest snapshot when the transaction began: the one copy-on-write preserves for. */
  readonly latest: SnapshotRecord | undefined;

  /** `changes`: already planned (the write paths plan theirs with plan.ts themselves). */
  constructor(
    private readonly ctx: Context,
    readonly disk: DiskState,
    readonly changes: Change[] = [],
  ) {
    this.latest = disk.latest();
  }

  /** lbn's live entry becomes `next` (undefined: none); `cur` is read unless the caller passes it. */
  async set(lbn: number, next: Entry | undefined, cur?: Entry): Promise<void> {
    const c = cur ?? (await this.disk.live.get(lbn));
    this.changes.push({ lbn, cur: c, next, preserve: await needsPreserve(this.disk, this.latest, c, lbn) });
  }

  /** lbn reads as zeros afterwards (plan.ts zeroEntry); nothing is planned when it already does. */
  async zero(lbn: number, overBacking: boolean, cur?: Entry): Promise<void> {
    cur ??= await this.disk.live.get(lbn);
    const next = zeroEntry(overBacking, this.disk.rec.epoch);
    if (alreadyZero(cur, next)) return;
    this.changes.push({ lbn, cur, next, preserve: await needsPreserve(this.disk, this.latest, cur, lbn) });
  }

  /**
   * A hole whose content changes without an entry of its own (a clone's inherited block cut off by a
   * shrink): the latest snapshot must keep seeing what it saw, so it records the block as `inherit`.
   */
  async keepForSnapshot(lbn: number): Promise<void> {
    if ((await this.disk.live.get(lbn)) !== undefined) return;
    if (await needsPreserve(this.disk, this.latest, undefined, lbn)) this.changes.push({ lbn, cur: undefined, next: undefined, preserve: true });
  }

  /** Stage and commit; see CommitOptions. */
  async commit(opts: CommitOptions = {}): Promise<void> {
    const wait = opts.wait ?? true;
    const done = this.stage(opts, wait);
    if (wait || this.ctx.backlog > MAX_BACKLOG) await done;
    else done.catch(() => undefined);
  }

  /**
   * The synchronous part of commit: stage the changes (and the record) and queue the batch (`urgent`:
   * someone waits for it, so skip the group-commit delay); the promise settles when the batch commits.
   */
  stage(opts: CommitOptions, urgent: boolean): Promise<void> {
    const { ctx, disk, changes } = this;
    const reserved = opts.reserved ?? [];
    // New checksums take the generation of the moment their batch is queued (sums.ts): an fsync that began
    // before (and may already have flushed the pool) does not settle them.
    for (const c of changes) if (c.next?.kind === 'data' && c.next.sums !== undefined) c.next.gen = ctx.integrity.stamp();
    const L = disk.latest();
    const before = disk.rec;
    const record = opts.claim !== undefined ? claimed(opts.record ?? before, opts.claim) : opts.record;
    const ops: BatchOp[] = [...(record ? [ctx.recordOp(record)] : []), ...(opts.extra ?? [])];
    const frees: number[] = [];
    let allocDelta = 0;
    let heldDelta = 0;
    // One object per preserved entry: Table.committed() matches staged entries by identity.
    const inherit: Entry = { kind: 'inherit', epoch: 0 };
    const preservedOf = (c: Change): Entry => c.cur ?? inherit;
    for (const c of changes) {
      ops.push(c.next ? disk.live.putOp(c.lbn, c.next) : disk.live.delOp(c.lbn));
      if (c.preserve && L) {
        ops.push(disk.snapTable(L.id).putOp(c.lbn, preservedOf(c)));
        if (c.cur?.kind === 'data') heldDelta++;
      } else if (c.cur?.kind === 'data') frees.push(c.cur.pbn);
      allocDelta += (c.next?.kind === 'data' ? 1 : 0) - (c.cur?.kind === 'data' ? 1 : 0);
    }
    assertUnclaimed(disk, 'a table change');
    const snapTable = L ? disk.snapTable(L.id) : undefined;
    for (const c of changes) {
      disk.live.staged(c.lbn, c.next);
      if (c.preserve && snapTable) snapTable.staged(c.lbn, preservedOf(c));
    }
    disk.allocated += allocDelta;
    if (L && heldDelta) disk.held.set(L.id, (disk.held.get(L.id) ?? 0) + heldDelta);
    if (record) disk.rec = record;
    return ctx.commit(ops, false, urgent, opts.ready ? { ready: opts.ready } : {}).then(
      () => {
        for (const c of changes) {
          disk.live.committed(c.lbn, c.next);
          if (c.preserve && snapTable) snapTable.committed(c.lbn, preservedOf(c));
        }
        for (const pbn of frees) ctx.pool.free(disk.blockSize, pbn);
      },
      (e: unknown) => {
        for (const c of changes) {
          disk.live.unstage(c.lbn, c.next);
          if (c.preserve && snapTable) snapTable.unstage(c.lbn, preservedOf(c));
        }
        for (const pbn of reserved) ctx.pool.free(disk.blockSize, pbn);
        disk.allocated -= allocDelta;
        if (L && heldDelta) disk.held.set(L.id, (disk.held.get(L.id) ?? 0) - heldDelta);
        if (record && disk.rec === record) disk.rec = before;
        log.error({ err: e, disk: disk.rec.name, changes: changes.length }, 'metadata commit failed');
        throw e;
      },
    );
  }
}

/**
 * An entry change that keeps the same physical block and only changes its checksums (sums.ts): a block
 * going unverified before a write in place, a seal, a scrub. Nothing is freed or moved; the caller holds
 * the block's lock or stages it in one synchronous step (the fast path), and `next` keeps the table's current
 * entry's pbn. Dropping checksums is `lazy` (an fsync need not make it durable: write intents cover a crash
 * that loses it); new checksums ride a generation the next fsync settles.
 */
export async function restamp(ctx: Context, table: Table, lbn: number, next: DataEntry): Promise<void> {
  table.staged(lbn, next);
  try {
    await ctx.commit([table.putOp(lbn, next)], false, false, { lazy: next.sums === undefined });
  } catch (e) {
    table.unstage(lbn, next);
    throw e;
  }
  table.committed(lbn, next);
}
