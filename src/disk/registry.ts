/**
 * The registry of named disks in one store: opening (format check + table scan), create, delete, resize,
 * and the space and status figures. Snapshot commands are in snapshots.ts, block I/O in read.ts/write.ts/discard.ts; the interface above the layer is view.ts.
 * Every command changes the store with one atomic batch; large table clean-ups (a deleted disk's blocks)
 * are orphaned by that batch and purged afterwards, so a crash leaves the old state or the new one.
 */
import { DEFAULT_CEPH_CONF, openDb, openLevel, type RadosOptions } from '../meta/db.js';
import { ClusterMeta } from '../store/radosMeta.js';
import { DISK_PREFIX, GEN_KEY, HISTORY_PREFIX, POOL_SYNCED_PREFIX, SEQ_KEY, diskKey, historyKey, prefixEnd } from '../meta/keys.js';
import type { BlockStoreKind, RadosRecord, DiskRecord, HistoryRecord, SeqRecord, SnapshotRecord } from '../meta/records.js';
import { Pool, type StoreWrapper } from '../store/pool.js';
import { bottomFactory } from '../store/bottoms.js';
import { sweepBlocks } from '../store/levelBlocks.js';
import { sweepObjects } from '../store/radosBlocks.js';
import { Context, DiskState } from './context.js';
import type { BatchOp, Table } from '../meta/table.js';
import { purgeOrphans, scanTables, type ScanReport } from './scan.js';
import { checkName } from './names.js';
import { checkBlockSize, checkVirtualSize, DEFAULT_BLOCK_SIZE } from '../util/size.js';
import { blocksFor } from '../util/range.js';
import { busy, exists, invalid, notFound } from '../errors.js';
import { logger } from '../log.js';
import { writeExclusive } from './write.js';
import { Transaction } from './commit.js';
import { flushStore, flushStoreNow, recordClosed } from './durable.js';
import { Disk, View } from './view.js';
import { Landing } from './landing.js';
import { clonesOf, createSnapshot, deleteSnapshot, rollback, cloneSnapshot, startRevert, type RollbackOptions } from './snapshots.js';
import { collectView } from './viewScan.js';
import { dropClaim } from './identity.js';
import type { GenRecord } from './sums.js';
import { repairDisk, ScrubJob, scrubDisks, sealDue, startSealer, type RepairReport, type RepairSource } from './scrub.js';

export interface OpenOptions {
  dir: string;
  poolSize?: number;
  wrap?: StoreWrapper;
  /** Purge orphaned tables (and unreferenced block values) at open (default true; `check` opens without it to report them). */
  purge?: boolean;
  /**
   * Where block data lives: a new store is created with it (default `file`); an existing store must have
   * been created with it (INVALID otherwise). Undefined: whatever the store recorded.
   */
  blockStore?: BlockStoreKind;
  /** A `rados` store's ceph.conf (else the recorded one) and, creating one, its pool (meta/db.ts). */
  rados?: RadosOptions;
  /** Bytes of memory for cached table entries (default DEFAULT_TABLE_CACHE, meta/table.ts). */
  tableCache?: number;
}

const log = logger('registry');

export class Registry {
  private constructor(
    readonly ctx: Context,
    readonly dir: string,
    readonly scan: ScanReport,
    /** The store's bottom, as recorded in its format record. */
    readonly blockStore: BlockStoreKind,
    /** `rados` stores: the cluster (ceph.conf in use), pool and object prefix. */
    readonly rados?: RadosRecord,
    /** `rados` stores: the metadata's journal and lock in the cluster (store/radosMeta.ts). */
    private meta?: ClusterMeta,
  ) {}

  static async open(opts: OpenOptions): Promise<Registry> {
    const inspecting = opts.purge === false; // `check`: the store as it was left (no purge, upgrade or resumed work)
    let meta = opts.rados?.store !== undefined ? await fromCluster(opts.dir, opts.rados) : undefined;
    let opened;
    try {
      opened = await openDb(opts.dir, { ...(opts.blockStore !== undefined ? { blockStore: opts.blockStore } : {}), ...(opts.rados ? { rados: opts.rados } : {}), upgrade: !inspecting });
    } catch (e) {
      await meta?.close().catch(() => undefined);
      throw e;
    }
    const { db, blockStore, rados, created } = opened;
    try {
      if (rados) {
        // The store lives in the cluster: its lock first, then the local database brought up to the
        // cluster's journal (or, new, written there as the first checkpoint); every later write is journaled.
        meta ??= await ClusterMeta.open(rados, opts.dir);
        if (created) {
          await meta.attach(db, true);
          await meta.checkpoint(db);
        } else {
          await meta.catchUp(db);
          await meta.attach(db);
        }
      }
      const pool = new Pool(bottomFactory(blockStore, opts.dir, db, rados), opts.poolSize ?? Infinity, opts.wrap);
      const ctx = new Context(db, pool, opts.tableCache);
      const [seq, gen] = await db.getMany([SEQ_KEY, GEN_KEY]);
      ctx.seq = JSON.parse(seq!) as SeqRecord;
      ctx.integrity.load(gen === undefined ? undefined : (JSON.parse(gen) as GenRecord));
      // The new session, durably, before anything is written in its generations (sums.ts).
      if (!inspecting) await db.put(GEN_KEY, JSON.stringify(ctx.integrity.record(false)), { sync: true });
      for await (const [key, value] of db.iterator({ gte: POOL_SYNCED_PREFIX, lt: POOL_SYNCED_PREFIX + '~' })) {
        ctx.syncedLength.set(parseInt(key.slice(POOL_SYNCED_PREFIX.length), 16), Number(value));
      }
      for await (const [, value] of db.iterator({ gte: DISK_PREFIX, lt: DISK_PREFIX + '~' })) {
        const rec = JSON.parse(value) as DiskRecord;
        ctx.disks.set(rec.name, new DiskState(rec, ctx));
      }
      const scan = await scanTables(ctx);
      // A rados store connects now: a cluster that is not there fails the open, not the first write.
      if (rados) await pool.store(DEFAULT_BLOCK_SIZE);
      const reg = new Registry(ctx, opts.dir, scan, blockStore, rados, meta);
      reg.inspecting = inspecting;
      if (scan.orphanTables.size && !inspecting) await purgeOrphans(ctx, scan.orphanTables);
      // Block values whose discard was lost (a crash after the batch that freed them, a failed delete).
      // The allocators now hold every referenced pbn, and nothing writes before open returns.
      if (blockStore === 'leveldb' && !inspecting) await sweepBlocks(db, (bs, pbn) => pool.isUsed(bs, pbn));
      // The same for objects in Ceph, only after a session that did not close cleanly (it lists the pool).
      const cleanBefore = gen !== undefined && (JSON.parse(gen) as GenRecord).closed === true;
      if (blockStore === 'rados' && !inspecting && !cleanBefore) {
        const s = await sweepObjects(pool, [...ctx.disks.values()].map((d) => d.blockSize));
        if (s.orphans) log.info({ objects: s.orphans }, 'removed block objects no table references (a crash left them)');
      }
      if (!inspecting) {
        // A rollback a crash or a close interrupted goes on moving entries back (check only looks).
        for (const d of ctx.disks.values()) startRevert(ctx, d);
        // Free space inside the pool files goes back to the host filesystem, in the background.
        pool.punchFree().catch(() => undefined);
        // Live blocks written in place get checksums again once idle (scrub.ts).
        reg.stopSealer = startSealer(ctx);
      }
      return reg;
    } catch (e) {
      await meta?.close().catch(() => undefined);
      await db.close();
      throw e;
    }
  }

  /**
   * Flush and close. A pool that failed (its sync throws) is still closed, and so is the database, so the
   * store can be opened again; the first error is thrown.
   */
  async close(): Promise<void> {
    let trim = false;
    try {
      for (const d of this.ctx.disks.values()) d.revertStop = true; // a rollback's move resumes at the next open
      for (const d of this.ctx.disks.values()) await d.settled();
      this.stopSealer();
      this.scrubJob?.stop();
      await this.scrubJob?.done;
      // Blocks written in place since their last seal get their checksums now (each is read once).
      if (!this.inspecting && !this.ctx.failure) await sealDue(this.ctx, true).catch(() => undefined);
      await this.ctx.drain();
      this.ctx.stop();
      await this.ctx.pool.sync();
      await this.ctx.pool.settle();
      // The synced lengths are recorded first (durably), then close() cuts the files there; if they cannot
      // be, the files keep their length (check would otherwise take later unsynced growth for lost data).
      if (this.inspecting) return;
      const lengths = await this.ctx.pool.lengths(); // flushed above: all of it is durable
      const ends = new Map([...this.ctx.pool.usedEnds()].map(([bs, end]) => [bs, Math.min(end, lengths.get(bs) ?? end)]));
      trim = await recordClosed(this.ctx, ends).then(() => true, () => false);
    } finally {
      try {
        await this.ctx.pool.close({ trim });
      } finally {
        try {
          // a clean close leaves the cluster a checkpoint (a new machine starts from it, not the whole journal)
          if (this.meta && !this.inspecting && trim) await this.meta.checkpoint(this.ctx.db).catch((e: Error) => log.warn({ err: e }, 'checkpoint of the metadata in the cluster failed (the journal keeps everything)'));
          await this.meta?.close().catch(() => undefined);
        } finally {
          await this.ctx.db.close();
        }
      }
    }
  }

  /**
   * Rewrite the damaged blocks of disk `name` (live and snapshots) from `sources`, each accepted only when
   * its bytes match the block's checksums (scrub.ts repairDisk); durable when this returns.
   */
  async repair(name: string, sources: RepairSource[]): Promise<RepairReport> {
    const r = await repairDisk(this.ctx, this.ctx.disk(name), sources);
    if (r.repaired.length) await flushStore(this.ctx);
    return r;
  }

  /** Make every acknowledged write durable (durable.ts). */
  sync(): Promise<void> {
    return flushStore(this.ctx);
  }

  /** sync() without an await when it can be; false: nothing was done, call sync(). */
  syncNow(): boolean {
    return flushStoreNow(this.ctx);
  }

  /** A disk's state, for the disk layer and its tests; everything above uses diskView/snapshotView. */
  disk(name: string): DiskState {
    return this.ctx.disk(name);
  }

  /** The live disk `name` as a Disk (NOT_FOUND if there is none). */
  diskView(name: string): Disk {
    return new Disk(this.ctx, this.ctx.disk(name));
  }

  /** Snapshot `disk@snap` as a View (NOT_FOUND if either is missing). */
  snapshotView(name: string, snap: string): View {
    const d = this.ctx.disk(name);
    return new View(this.ctx, d, d.rec.snapshots[d.snapIndex(snap)]!.id);
  }

  /** A modification time strictly later than any handed out before (files whose content changes at each look). */
  changeTime(): number {
    return this.ctx.clock.tick();
  }

  /** Somewhere to stage blocks of this size before they become a disk's content (restore). */
  landing(blockSize: number): Promise<Landing> {
    return Landing.open(this.ctx, blockSize);
  }

  /** Bytes the pool holds, and its capacity (Infinity: no limit). */
  poolUsage(): { usedBytes: number; capacity: number } {
    return { usedBytes: this.ctx.pool.usedBytes(), capacity: this.ctx.pool.capacity };
  }

  has(name: string): boolean {
    return this.ctx.disks.has(name);
  }

  /** Opened by `check` (purge: false): close records nothing and leaves the pool files' length alone. */
  private inspecting = false;
  private stopSealer: () => void = () => undefined;

  /** The scrub running or last run (one at a time; `scrub` control command). */
  scrubJob: ScrubJob | undefined;

  /**
   * Start a scrub of `names` (every disk when empty) in the background: every referenced block read and
   * checked against its checksums, unverified blocks sealed, at most `rate` bytes/s (0: no limit). Progress
   * and the result are in `scrubJob` (status); the result also goes to the history. BUSY while one runs.
   */
  startScrub(names: string[], rate = 0): ScrubJob {
    if (this.scrubJob && !this.scrubJob.finished) throw busy(`a scrub of ${this.scrubJob.what} is running (scrub stop ends it)`);
    const disks = (names.length ? names : this.names()).map((n) => this.ctx.disk(n));
    const job = new ScrubJob(names.length ? names.join(', ') : 'all disks');
    job.done = scrubDisks(this.ctx, disks, { seal: true, rate, progress: (r, done, total) => job.update(r, done, total), stopped: () => job.stopping })
      .then(
        (r) => job.finish(r, null),
        (e: unknown) => job.finish(null, e),
      )
      .then(() => this.recordHistory(`scrub ${job.what}`, job.error ? 'error' : 'ok', job.summary()).catch(() => undefined));
    this.scrubJob = job;
    return job;
  }

  private control: Promise<unknown> = Promise.resolve();

  /**
   * Control commands (create, delete, snapshot, rollback, restore commits, …) run one at a time: each
   * checks names and indexes and then changes them, so two must never interleave. Block I/O is not
   * affected (it synchronises per disk through the gate and block locks).
   */
  serialized<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.control.then(fn, fn);
    this.control = run.catch(() => undefined);
    return run;
  }

  names(): string[] {
    return [...this.ctx.disks.keys()].sort();
  }

  async create(name: string, size: number, blockSize = DEFAULT_BLOCK_SIZE): Promise<DiskRecord> {
    checkName(name);
    checkBlockSize(blockSize);
    checkVirtualSize(size, blockSize);
    if (this.ctx.disks.has(name)) throw exists(`disk ${name}`);
    const rec = this.ctx.newDiskRecord(name, size, blockSize);
    await this.ctx.commit([this.ctx.recordOp(rec), this.ctx.seqOp()], true);
    this.ctx.disks.set(name, new DiskState(rec, this.ctx));
    return rec;
  }

  /** Delete a disk. With snapshots it needs `recursive`; a disk other disks are cloned from is refused. */
  async delete(name: string, opts: { recursive?: boolean } = {}): Promise<void> {
    const d = this.ctx.disk(name);
    if (d.isOpen() || [...d.snapOpen.values()].some((n) => n > 0)) throw busy(`disk ${name} is open`);
    const clones = clonesOf(this.ctx, d.rec.id);
    if (clones.length) throw busy(`disk ${name} has clones depending on its snapshots: ${clones.join(', ')} (delete them first)`);
    if (d.rec.snapshots.length && !opts.recursive) {
      throw busy(`disk ${name} has ${d.rec.snapshots.length} snapshot(s); delete them first or use 'delete ${name} -r'`);
    }
    await d.changing(true, async () => {
      await this.ctx.commit([{ type: 'del', key: diskKey(name) }], true);
      this.ctx.disks.delete(name);
    });
    // The tables are orphans now: free their blocks and purge their keys.
    await this.freeTables(d, [d.live, ...d.rec.snapshots.map((s) => d.snapTable(s.id))]);
  }

  private async freeTables(d: DiskState, tables: Table[]): Promise<void> {
    for (const t of tables) {
      for await (const [, e] of t.entries()) {
        if (e.kind === 'data') this.ctx.pool.free(d.blockSize, e.pbn);
      }
      t.forget();
    }
    await purgeOrphans(this.ctx, tables.map((t) => t.prefix));
  }

  /**
   * Change a disk's virtual size. Shrinking zeroes the tail of the new last block and drops the blocks past
   * the end (preserving them for the latest snapshot); refused while the disk is open.
   */
  async resize(name: string, size: number): Promise<void> {
    const d = this.ctx.disk(name);
    checkVirtualSize(size, d.blockSize);
    if (size < d.rec.size && d.isOpen()) throw busy(`disk ${name} is open; shrinking it needs it closed`);
    if (size === d.rec.size) return;
    if (size > d.rec.size) {
      await d.changing(true, async () => {
        await dropClaim(this.ctx, d);
        try {
          await new Transaction(this.ctx, d).commit({ record: { ...d.rec, size } });
        } finally {
          d.changed();
        }
      });
      return;
    }
    const bs = d.blockSize;
    const tail = size % bs;
    await d.changing(true, async () => {
      await dropClaim(this.ctx, d);
      if (tail) await writeExclusive(this.ctx, d, size, Buffer.alloc(Math.min(bs - tail, d.rec.size - size)));
      await this.ctx.drain();
      const first = blocksFor(size, bs);
      const tx = new Transaction(this.ctx, d);
      for await (const [lbn, cur] of d.live.entries(first)) await tx.set(lbn, undefined, cur);
      const rec: DiskRecord = { ...d.rec, size };
      if (rec.backing) rec.backing = { ...rec.backing, limitBlocks: Math.min(rec.backing.limitBlocks, first) };
      const b = d.rec.backing;
      const backing = this.ctx.backingOf(d);
      if (b && tx.latest && backing) {
        // Blocks past the new end that the clone inherits change from backing data to zeros: the latest
        // snapshot must keep seeing the backing data.
        const inherited = await collectView(this.ctx, backing.origin, backing.index);
        for (const lbn of inherited.lbns) if (lbn >= first && lbn < b.limitBlocks) await tx.keepForSnapshot(lbn);
      }
      try {
        await tx.commit({ record: rec });
      } finally {
        d.changed();
      }
    });
  }

  /** An instant snapshot of disk `name` (snapshots.ts); `also`: operations for the same batch (historyOps). */
  snapshot(name: string, snap: string, also?: (s: SnapshotRecord) => BatchOp[]): Promise<SnapshotRecord> {
    return createSnapshot(this.ctx, this.ctx.disk(name), snap, also);
  }

  deleteSnapshot(name: string, snap: string): Promise<void> {
    return deleteSnapshot(this.ctx, this.ctx.disk(name), snap);
  }

  /** Make disk `name` exactly its snapshot `snap` again (`destroyNewer`: deleting the newer snapshots). */
  rollback(name: string, snap: string, opts: RollbackOptions = {}): Promise<void> {
    return rollback(this.ctx, this.ctx.disk(name), snap, opts);
  }

  /** A writable disk `newName` reading through to `name@snap`. */
  clone(name: string, snap: string, newName: string): Promise<DiskRecord> {
    return cloneSnapshot(this.ctx, this.ctx.disk(name), snap, newName);
  }

  /** Append one control command to the persistent history. */
  async recordHistory(command: string, result: 'ok' | 'error', message?: string, code?: string): Promise<void> {
    await this.ctx.commit(this.historyOps(command, result, message, code));
  }

  /**
   * The batch operations that append one line to the history (its sequence number taken now): for a
   * command whose change is one batch, so that the line lands with it (snapshot: one synced batch, not two).
   */
  historyOps(command: string, result: 'ok' | 'error', message?: string, code?: string): BatchOp[] {
    const seq = this.ctx.seq.history;
    this.ctx.seq = { ...this.ctx.seq, history: seq + 1 };
    const rec: HistoryRecord = { time: new Date().toISOString(), command, result, ...(message ? { message } : {}), ...(code ? { code } : {}) };
    return [{ type: 'put', key: historyKey(seq), value: JSON.stringify(rec) }, this.ctx.seqOp()];
  }

  async history(limit = 1000): Promise<HistoryRecord[]> {
    const out: HistoryRecord[] = [];
    for await (const v of this.ctx.db.values({ gte: HISTORY_PREFIX, lt: prefixEnd(HISTORY_PREFIX), reverse: true, limit })) out.push(JSON.parse(v) as HistoryRecord);
    return out.reverse();
  }
}

/**
 * `--rados-store ID`: the store that lives in the cluster under that prefix, in this (new or stale) store
 * directory: its lock taken, the local database brought up to the cluster's state. NOT_FOUND when the
 * cluster has no such store.
 */
async function fromCluster(dir: string, o: RadosOptions): Promise<ClusterMeta> {
  if (!o.pool) throw invalid('--rados-store needs --rados-pool (the Ceph pool the store is in)');
  const meta = await ClusterMeta.open({ conf: o.conf ?? DEFAULT_CEPH_CONF, pool: o.pool, prefix: o.store! }, dir);
  try {
    if (!(await meta.exists())) {
      await meta.abandon();
      throw notFound(`store ${o.store} in Ceph pool ${o.pool}`);
    }
    const db = await openLevel(dir);
    try {
      await meta.catchUp(db);
    } finally {
      await db.close();
    }
    return meta;
  } catch (e) {
    await meta.close().catch(() => undefined);
    throw e;
  }
}
