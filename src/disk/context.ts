/**
 * Shared state of an open store that the disk modules work on: the database, the pool, the entry cache,
 * and one DiskState per disk (its record, locks, open counts and space counters). Pure bookkeeping; the
 * operations live in read.ts, write.ts, discard.ts, commit.ts, snapshots.ts and registry.ts.
 */
import type { Db } from '../meta/db.js';
import { EntryCache, Table, type BatchOp } from '../meta/table.js';
import { livePrefix, snapPrefix, diskKey, SEQ_KEY, SYNC_KEY } from '../meta/keys.js';
import type { DiskRecord, SeqRecord, SnapshotRecord } from '../meta/records.js';
import type { Pool } from '../store/pool.js';
import { KeyedLock, Gate } from '../util/lock.js';
import { notFound, VdiskError } from '../errors.js';
import { logger } from '../log.js';
import { Integrity } from './sums.js';

const log = logger('context');

/**
 * Modification times, in milliseconds. `now()` never goes back; `tick()` is also strictly later than
 * every time handed out before, so a change stamped with it is never mistaken for an earlier state by
 * anyone who compares times (the kernel keeps a file's cached pages across opens only while its mtime
 * and size are unchanged: see fuse/mount.ts).
 */
export class ChangeClock {
  private last = 0;
  now(): number {
    this.last = Math.max(Date.now(), this.last);
    return this.last;
  }
  tick(): number {
    this.last = Math.max(Date.now(), this.last + 1);
    return this.last;
  }
}

export class DiskState {
  readonly lock = new KeyedLock();
  readonly gate = new Gate();
  /** Open file handles on the live disk. */
  openCount = 0;
  /** Open handles on each snapshot file (snapshot id -> count). */
  snapOpen = new Map<number, number>();
  /** Live table entries holding data (allocated blocks). */
  allocated = 0;
  /** Data blocks each snapshot holds in its own table (snapshot id -> count). */
  held = new Map<number, number>();
  readonly live: Table;
  private snapTables = new Map<number, Table>();
  /**
   * The background job finishing a rollback (rec.reverting, snapshots.ts startRevert), while it runs;
   * writes and control operations wait for it (`settled`), reads do not.
   */
  revert: Promise<void> | null = null;
  /** Set by close: the revert job stops after its current batch (it resumes when the store is opened again). */
  revertStop = false;
  /** Live blocks written in place since they lost their checksums (lbn -> time of the last write): the sealer's work (sums.ts). */
  readonly dirty = new Map<number, number>();
  /** The batch ending the disk's claim to hold a restored image, while it is in flight (identity.ts). */
  claimDrop: Promise<void> | null = null;
  /**
   * Last modification: writes stamp it with `clock.now()`; changes made to the contents or size by other
   * means than writes (rollback, restore into the disk, resize) with `clock.tick()`. Not persisted: a
   * disk opened from the store starts at its creation time.
   */
  mtime: number;
  constructor(
    public rec: DiskRecord,
    private ctx: Context,
  ) {
    this.live = new Table(ctx.db, ctx.cache, livePrefix(rec.id), true);
    this.mtime = rec.created;
  }

  /** Record a change to the contents or size not made by a write. */
  changed(): void {
    this.mtime = this.ctx.clock.tick();
  }

  snapTable(snapId: number): Table {
    let t = this.snapTables.get(snapId);
    if (!t) {
      t = new Table(this.ctx.db, this.ctx.cache, snapPrefix(snapId), false);
      this.snapTables.set(snapId, t);
    }
    return t;
  }

  /** Resolves once no rollback is moving entries back (see `revert`). */
  async settled(): Promise<void> {
    while (this.revert) await this.revert;
  }

  /**
   * Run fn inside the gate (shared, or `exclusive`) once no rollback is moving entries back: the way in for
   * everything that changes the disk's tables (writes, discard, snapshot commands, resize, delete, restore).
   * A rollback that starts while fn waits for the gate is waited for too.
   */
  async changing<T>(exclusive: boolean, fn: () => Promise<T>): Promise<T> {
    for (;;) {
      await this.settled();
      const inside = async (): Promise<{ v: T } | null> => (this.rec.reverting === undefined ? { v: await fn() } : null);
      const r = exclusive ? await this.gate.exclusively(inside) : await this.gate.run(inside);
      if (r) return r.v;
      if (!this.revert) throw new VdiskError('IO', `disk ${this.rec.name}: a rollback is unfinished (it goes on when the store is opened again)`);
    }
  }

  latest(): SnapshotRecord | undefined {
    return this.rec.snapshots[this.rec.snapshots.length - 1];
  }

  snapIndex(name: string): number {
    const i = this.rec.snapshots.findIndex((s) => s.name === name);
    if (i < 0) throw notFound(`snapshot ${this.rec.name}@${name}`);
    return i;
  }

  get blockSize(): number {
    return this.rec.blockSize;
  }

  /** Hold snapshots open (their files or images are being read): they cannot be deleted meanwhile. */
  pinSnapshots(ids: Iterable<number>): void {
    for (const id of ids) this.snapOpen.set(id, (this.snapOpen.get(id) ?? 0) + 1);
  }

  unpinSnapshots(ids: Iterable<number>): void {
    for (const id of ids) this.snapOpen.set(id, (this.snapOpen.get(id) ?? 1) - 1);
  }

  isOpen(): boolean {
    return this.openCount > 0;
  }
}

const GROUP_DELAY_MS = 2;
/** Freed blocks held for punching after which the next batch is written with sync, so they come free. */
const PUNCH_BACKLOG = 4096;
const PUNCH_DELAY_MS = 200;
export const MAX_BACKLOG = 20_000;

export class Context {
  readonly disks = new Map<string, DiskState>();
  readonly cache: EntryCache;
  readonly clock = new ChangeClock();
  /** Block checksums: generations, counts of damaged blocks (sums.ts). */
  readonly integrity = new Integrity();
  seq!: SeqRecord;

  constructor(
    readonly db: Db,
    readonly pool: Pool,
    tableCacheBytes?: number,
  ) {
    this.cache = new EntryCache(tableCacheBytes);
    pool.onHeld = () => this.schedulePunch();
    pool.sinceWrite = () => this.sinceWrite();
  }

  /** Pool-file lengths known synced (block size -> bytes), as recorded under meta!pool! (durable.ts). */
  readonly syncedLength = new Map<number, number>();
  /** meta!pool! puts waiting for the next synced batch (durable.ts recordSynced). */
  readonly syncedMarks = new Map<string, string>();

  private punchTimer: NodeJS.Timeout | null = null;
  private stopped = false;

  /**
   * Freed blocks wait for a durable batch before their space is punched (store/pool.ts): unless one comes
   * by itself (an fsync, a control command), a synced empty batch follows PUNCH_DELAY_MS after the first
   * such free. It costs no LevelDB write when everything is durable already.
   */
  private schedulePunch(): void {
    if (this.punchTimer || this.stopped) return;
    this.punchTimer = setTimeout(() => {
      this.punchTimer = null;
      if (!this.stopped && !this.failure) this.commit([], true).catch(() => undefined);
    }, PUNCH_DELAY_MS);
    this.punchTimer.unref();
  }

  /** No more background batches (close). */
  stop(): void {
    this.stopped = true;
    if (this.punchTimer) clearTimeout(this.punchTimer);
    this.punchTimer = null;
  }

  disk(name: string): DiskState {
    const d = this.disks.get(name);
    if (!d) throw notFound(`disk ${name}`);
    return d;
  }

  diskById(id: number): DiskState | undefined {
    for (const d of this.disks.values()) if (d.rec.id === id) return d;
    return undefined;
  }

  /**
   * A clone's backing snapshot: the origin disk, the snapshot's index in it and its record; undefined for
   * a disk that is not a clone, or whose backing is missing (which check reports as an error).
   */
  backingOf(disk: DiskState): { origin: DiskState; index: number; snap: SnapshotRecord } | undefined {
    const b = disk.rec.backing;
    if (!b) return undefined;
    const origin = this.diskById(b.diskId);
    const index = origin ? origin.rec.snapshots.findIndex((s) => s.id === b.snapId) : -1;
    return origin && index >= 0 ? { origin, index, snap: origin.rec.snapshots[index]! } : undefined;
  }

  /**
   * The record of a new disk, with the next disk id: the sequence moves on at once, and the caller commits
   * the record with seqOp() in one batch (create, clone, restore as a new disk).
   */
  newDiskRecord(name: string, size: number, blockSize: number, backing?: DiskRecord['backing']): DiskRecord {
    const rec: DiskRecord = { id: this.seq.disk, name, size, blockSize, created: this.clock.tick(), epoch: 1, snapshots: [], ...(backing ? { backing } : {}) };
    this.seq = { ...this.seq, disk: this.seq.disk + 1 };
    return rec;
  }

  recordOp(rec: DiskRecord): BatchOp {
    return { type: 'put', key: diskKey(rec.name), value: JSON.stringify(rec) };
  }

  seqOp(): BatchOp {
    return { type: 'put', key: SEQ_KEY, value: JSON.stringify(this.seq) };
  }

  /**
   * Every metadata change goes through one ordered commit pipeline: batches queued while one is being
   * written are merged into the next LevelDB batch (group commit), in queue order, so changes to the
   * same key always land in the order they were made. `commit` resolves once the change is in LevelDB.
   * A batch whose blocks are still being written behind (`ready`) waits for them: data before reference.
   */
  commit(ops: BatchOp[], sync = false, urgent = true, more: { ready?: Promise<unknown>; barrier?: boolean; lazy?: boolean } = {}): Promise<void> {
    if (ops.length === 0 && !sync) return Promise.resolve();
    const lazy = more.lazy === true && !sync;
    if (!lazy) this.durablePending++;
    return new Promise<void>((resolve, reject) => {
      this.queue.push({ ops, sync, resolve, reject, ready: more.ready, barrier: more.barrier === true, lazy });
      this.backlog += ops.length;
      this.kick(urgent);
    });
  }

  /** Batches queued or being written that an fsync must make durable (not `lazy`). */
  private durablePending = 0;

  /**
   * Start the pump. Changes nobody waits for (plain writes, acknowledged once staged) wait up to
   * GROUP_DELAY_MS so that one LevelDB batch carries many of them: its fixed cost dominates small batches.
   */
  private kick(urgent: boolean): void {
    if (this.pumping) return;
    if (urgent) {
      if (this.timer) clearTimeout(this.timer);
      this.timer = null;
      void this.pump();
    } else if (!this.timer) {
      this.timer = setTimeout(() => {
        this.timer = null;
        if (!this.pumping) void this.pump();
      }, GROUP_DELAY_MS);
    }
  }

  private timer: NodeJS.Timeout | null = null;

  /** Resolves when everything queued so far has been committed. */
  drain(): Promise<void> {
    return new Promise<void>((resolve) => {
      this.queue.push({ ops: [], sync: false, resolve, reject: () => resolve(), lazy: true });
      this.kick(true);
    });
  }

  /**
   * Table changes queued or being written. Writes are acknowledged before their batch commits; past
   * MAX_BACKLOG they wait for it instead, so a writer faster than LevelDB cannot grow memory without bound.
   */
  backlog = 0;

  /**
   * A batch has committed without sync since the last synced one. While false, a sync commit with no
   * changes of its own has nothing to make durable and skips LevelDB's log flush (an fsync after in-place
   * overwrites, the steady state of a database, changes no table).
   */
  private unsynced = true;

  /**
   * Nothing queued or being written, and nothing committed since the last synced batch, that an fsync must
   * make durable: LevelDB has nothing to do for one. `lazy` batches do not count (checksums dropped before
   * writes in place: sums.ts write intents cover their loss in a crash).
   */
  get settled(): boolean {
    return this.durablePending === 0 && !this.unsynced;
  }

  /** A commit failed after its writes were acknowledged: the store is no longer trustworthy. */
  failure: Error | null = null;
  /**
   * When a disk of the store was last written (ms), and how many writes so far: the sealer (scrub.ts
   * startSealer) and punching (store/pool.ts) yield to writers.
   */
  lastWrite = 0;
  writes = 0;

  wrote(): void {
    this.lastWrite = Date.now();
    this.writes++;
  }

  /** Milliseconds since a disk of the store was last written. */
  sinceWrite(): number {
    return Date.now() - this.lastWrite;
  }
  /** `ready`: the pool writes the batch's entries point at (written behind); the batch waits for them. */
  /**
   * `barrier`: pool writes wait for this batch (write-behind `after`: a region's write intent before writes
   * in place, sums.ts), so no batch queued after it that waits for pool writes (`ready`) may share its group: the group
   * would wait for writes that wait for the group.
   */
  private queue: { ops: BatchOp[]; sync: boolean; resolve: () => void; reject: (e: unknown) => void; ready?: Promise<unknown> | undefined; barrier?: boolean; lazy?: boolean }[] = [];
  private pumping = false;

  private async pump(): Promise<void> {
    this.pumping = true;
    try {
      while (this.queue.length) {
        const group: typeof this.queue = [];
        let n = 0;
        let barrier = false;
        while (this.queue.length && n < 20_000) {
          if (barrier && this.queue[0]!.ready) break; // see `queue`: it goes in the next group
          const item = this.queue.shift()!;
          barrier ||= item.barrier === true;
          group.push(item);
          n += item.ops.length;
        }
        const ops = group.flatMap((g) => g.ops);
        const queued = ops.length; // what commit() added to the backlog (marks added below are not)
        const settle = (): void => {
          this.backlog -= queued;
          for (const g of group) if (!g.lazy) this.durablePending--;
        };
        // Freed blocks waiting for a durable batch: past PUNCH_BACKLOG this batch is made one (store/pool.ts).
        const sync = group.some((g) => g.sync) || this.pool.punchBacklog() > PUNCH_BACKLOG;
        const punchable = sync ? this.pool.takePunchable() : null;
        try {
          const ready = group.flatMap((g) => (g.ready ? [g.ready] : []));
          if (ready.length) await Promise.all(ready);
          if (sync && this.syncedMarks.size) {
            for (const [key, value] of this.syncedMarks) ops.push({ type: 'put', key, value });
            this.syncedMarks.clear();
          }
          if (ops.length) await this.db.batch(ops, { sync });
          else if (sync && this.unsynced) await this.db.put(SYNC_KEY, new Date().toISOString(), { sync: true });
          // LevelDB's log is written in order: a synced batch makes every batch before it durable too.
          this.unsynced = sync ? false : this.unsynced || group.some((g) => !g.lazy && g.ops.length > 0);
          settle();
          if (punchable) this.pool.reclaim(punchable).catch((e: unknown) => log.error({ err: e }, 'giving freed blocks back failed'));
          for (const g of group) g.resolve();
        } catch (e) {
          if (punchable) this.pool.returnPunchable(punchable);
          settle();
          this.failure = e as Error;
          for (const g of group) g.reject(e);
        }
      }
    } finally {
      this.pumping = false;
    }
  }
}
