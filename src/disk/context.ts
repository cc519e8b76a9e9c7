/**
 * Shared state of an open store that the disk modules work on: the database, the pool, the entry cache,
 * and one DiskState per disk (its record, locks, open counts and space counters). Pure bookkeeping; the
 * operations live in io.ts, snapshots.ts and registry.ts.
 */
import type { Db } from '../meta/db.js';
import { EntryCache, Table, type BatchOp } from '../meta/table.js';
import { livePrefix, snapPrefix, diskKey, SEQ_KEY } from '../meta/keys.js';
import type { DiskRecord, SeqRecord, SnapshotRecord } from '../meta/records.js';
import type { Pool } from '../store/pool.js';
import { KeyedLock, Gate } from '../util/lock.js';
import { notFound } from '../errors.js';

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
  /** Set while the record's contentUid must be cleared on the next write. */
  constructor(
    public rec: DiskRecord,
    private ctx: Context,
  ) {
    this.live = new Table(ctx.db, ctx.cache, livePrefix(rec.id), true);
  }

  snapTable(snapId: number): Table {
    let t = this.snapTables.get(snapId);
    if (!t) {
      t = new Table(this.ctx.db, this.ctx.cache, snapPrefix(snapId), false);
      this.snapTables.set(snapId, t);
    }
    return t;
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

  isOpen(): boolean {
    return this.openCount > 0;
  }
}

export class Context {
  readonly disks = new Map<string, DiskState>();
  readonly cache = new EntryCache();
  seq!: SeqRecord;

  constructor(
    readonly db: Db,
    readonly pool: Pool,
  ) {}

  disk(name: string): DiskState {
    const d = this.disks.get(name);
    if (!d) throw notFound(`disk ${name}`);
    return d;
  }

  diskById(id: number): DiskState | undefined {
    for (const d of this.disks.values()) if (d.rec.id === id) return d;
    return undefined;
  }

  recordOp(rec: DiskRecord): BatchOp {
    return { type: 'put', key: diskKey(rec.name), value: JSON.stringify(rec) };
  }

  seqOp(): BatchOp {
    return { type: 'put', key: SEQ_KEY, value: JSON.stringify(this.seq) };
  }

  async commit(ops: BatchOp[], sync = false): Promise<void> {
    if (ops.length === 0) return;
    await this.db.batch(ops, { sync });
  }
}
