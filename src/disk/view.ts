/**
 * The disk layer's interface for everything above it (the FUSE files, image planning and producing,
 * status): a View is a disk's live content or one of its snapshots, as of now; a Disk is the live view,
 * writable. Each method tries its synchronous fast path first (read.ts, write.ts: a request whose table
 * entries are in memory and whose store reads and writes without waiting is answered with no await) and
 * falls back to the asynchronous path itself, so a caller gets a number now or a promise: the FUSE edge
 * only forwards. Views are cheap: a snapshot view finds its snapshot by id at each call, so it stays right
 * when older snapshots are deleted, and reads nothing (size 0) once its own snapshot is gone.
 */
import type { Context, DiskState } from './context.js';
import type { SnapshotRecord } from '../meta/records.js';
import type { DataEntry } from '../meta/keys.js';
import type { BlockStore } from '../store/blockStore.js';
import { readView, readViewNow } from './read.js';
import { writeDisk, writeDiskNow } from './write.js';
import { discardRange } from './discard.js';
import { seekView } from './extents.js';
import { collectView } from './viewScan.js';
import { resolve, type Resolved } from './resolve.js';
import { changedSince } from './snapshots.js';
import { flushStore, flushStoreNow } from './durable.js';
import { invalid, notFound } from '../errors.js';
import { splitRange } from '../util/range.js';
import { heldContent } from './identity.js';

/** Reads runs of physically adjacent blocks of a view's block size (image producers). */
export interface BlockReader {
  readRun(pbn: number, count: number, dst: Buffer): Promise<void>;
  /** Memory readRun reads into without a copy (aligned for O_DIRECT pool files), when the store has it. */
  alloc?(bytes: number): Promise<Buffer>;
}

export class View {
  constructor(
    protected readonly ctx: Context,
    readonly state: DiskState,
    /** The snapshot's id; null for the live disk. */
    readonly snapId: number | null,
  ) {}

  /** -1 for the live disk, the snapshot's index now, or undefined once the snapshot was deleted. */
  index(): number | undefined {
    if (this.snapId === null) return -1;
    const i = this.state.rec.snapshots.findIndex((s) => s.id === this.snapId);
    return i < 0 ? undefined : i;
  }

  /** The snapshot's record (undefined for the live disk or a deleted snapshot). */
  snapshot(): SnapshotRecord | undefined {
    const i = this.index();
    return i !== undefined && i >= 0 ? this.state.rec.snapshots[i] : undefined;
  }

  /** `disk` or `disk@snap`. */
  get name(): string {
    const s = this.snapshot();
    return s ? `${this.state.rec.name}@${s.name}` : this.state.rec.name;
  }

  get blockSize(): number {
    return this.state.blockSize;
  }

  /** Virtual size in bytes (0 for a deleted snapshot). */
  size(): number {
    if (this.snapId === null) return this.state.rec.size;
    return this.snapshot()?.size ?? 0;
  }

  /** Space this view holds of its own: the live disk's allocated blocks, or what the snapshot preserved. */
  heldBytes(): number {
    const n = this.snapId === null ? this.state.allocated : (this.state.held.get(this.snapId) ?? 0);
    return n * this.blockSize;
  }

  /** Read into dst at pos: the byte count (short at the end), now when it can be, else a promise. */
  read(dst: Buffer, pos: number): number | Promise<number> {
    const i = this.index();
    if (i === undefined) return 0;
    return readViewNow(this.ctx, this.state, i, pos, dst) ?? readView(this.ctx, this.state, i, pos, dst);
  }

  /** lseek SEEK_DATA / SEEK_HOLE from the tables: the offset, or null (ENXIO). */
  seek(pos: number, what: 'data' | 'hole'): Promise<number | null> {
    const i = this.index();
    return i === undefined ? Promise.resolve(null) : seekView(this.ctx, this.state, i, pos, what);
  }

  /** The view's data blocks in logical order (lbn, pbn, entry), scanned consistently (viewScan.ts). */
  blocks(): Promise<{ lbns: number[]; pbns: number[]; entries: DataEntry[] }> {
    return collectView(this.ctx, this.state, this.live());
  }

  /**
   * Check a whole block read from `entry`'s pbn (block lbn of this view) against its checksums (sums.ts):
   * throws CORRUPT naming the view and the offset when it is damaged (image producers, scrub). Returns the
   * block's CRC-32, which the check computed.
   */
  verifyBlock(entry: DataEntry, lbn: number, block: Buffer): number {
    return this.ctx.integrity.verifyCrc(entry, block, 0, () => `${this.name}, block ${lbn} (byte ${lbn * this.blockSize})`);
  }

  /** Where block lbn's content is (data at a pbn, or zeros), the block locked meanwhile. */
  async resolve(lbn: number): Promise<Resolved> {
    const i = this.live();
    const release = await this.state.lock.acquire(lbn);
    try {
      return await resolve(this.ctx, this.state, i, lbn);
    } finally {
      release();
    }
  }

  /** Blocks whose entries may differ between `base` (an older snapshot of the same disk) and this view. */
  async changesSince(base: View): Promise<number[]> {
    if (base.state !== this.state) throw invalid(`${base.name} is not a snapshot of disk ${this.state.rec.name}`);
    await this.ctx.drain(); // the snapshots' tables as committed: every staged change too
    return changedSince(this.state, base.live());
  }

  /** Reads of the pool blocks this view's entries point at (image producers read whole runs of them). */
  async blockReader(): Promise<BlockReader> {
    const bs = this.blockSize;
    const store: BlockStore = await this.ctx.pool.store(bs);
    const readRun = store.readRun
      ? store.readRun.bind(store)
      : async (pbn: number, count: number, dst: Buffer): Promise<void> => {
          await Promise.all(
            Array.from({ length: count }, (_, i) => {
              const b = dst.subarray(i * bs, (i + 1) * bs);
              return store.readParallel ? store.readParallel(pbn + i, b) : store.read(pbn + i, b);
            }),
          );
        };
    return { readRun, ...(store.allocAligned ? { alloc: store.allocAligned.bind(store) } : {}) };
  }

  /**
   * Hold the view while it is in use (an open file, an image being read): a snapshot cannot be deleted,
   * a live disk is open (no rollback, shrink or restore into it). Returns the release, safe to call twice.
   */
  pin(): () => void {
    const d = this.state;
    const id = this.snapId;
    if (id === null) d.openCount++;
    else d.pinSnapshots([id]);
    let held = true;
    return () => {
      if (!held) return;
      held = false;
      if (id === null) d.openCount--;
      else d.unpinSnapshots([id]);
    };
  }

  /** The index of a view that must still exist. */
  protected live(): number {
    const i = this.index();
    if (i === undefined) throw notFound(`snapshot ${this.state.rec.name} (id ${this.snapId}) was deleted`);
    return i;
  }
}

export class Disk extends View {
  constructor(ctx: Context, state: DiskState) {
    super(ctx, state, null);
  }

  /**
   * Write src at pos: the byte count, now when it can be (the rest of the work handed to `later`, which
   * must run it before any other code touches the disk: see write.ts), else a promise. A write that starts
   * at or past the end fails; one that crosses it is cut there. src must stay unchanged until the promise
   * settles.
   */
  write(src: Buffer, pos: number, later?: (work: () => void) => void): number | Promise<number> {
    const d = this.state;
    if (pos >= d.rec.size) return Promise.reject(invalid(`write past the end of disk ${d.rec.name}`));
    const data = pos + src.length > d.rec.size ? src.subarray(0, d.rec.size - pos) : src;
    const n = writeDiskNow(this.ctx, d, pos, data, later);
    if (n !== undefined) {
      d.mtime = this.ctx.clock.now();
      return n;
    }
    return this.writeCold(data, pos).then((m) => {
      d.mtime = this.ctx.clock.now();
      return m;
    });
  }

  /**
   * A write the fast path declined. When the reason may be that a block's entry is not in memory yet (after
   * a mount, or past the table cache), the entries are read and the fast path is tried once more: otherwise
   * the async path would make a partial write into a block a snapshot holds wait for the old block's read and
   * the new block's write, where the fast path copies the block behind the writer (write.ts). Measured by
   * hand (fio 8 KiB random writes over 2 GiB right after a snapshot on a disk mounted afresh, ABBA): 2,987
   * and 3,156 IOPS against 2,592 and 2,641 before.
   */
  private async writeCold(data: Buffer, pos: number): Promise<number> {
    const d = this.state;
    const lbns = splitRange(pos, data.length, d.blockSize)
      .map((p) => p.lbn)
      .filter((lbn) => d.live.peek(lbn) === undefined);
    if (lbns.length) {
      // Read under the blocks' locks, as every table read that may cache what it finds (meta/table.ts get).
      const release = await d.lock.acquireAll(lbns);
      try {
        await Promise.all(lbns.map((lbn) => d.live.get(lbn)));
      } finally {
        release();
      }
      const n = writeDiskNow(this.ctx, d, pos, data);
      if (n !== undefined) return n;
    }
    return writeDisk(this.ctx, d, pos, data);
  }

  /** The range reads as zeros and holds no block afterwards (the part past the end is ignored). */
  async discard(pos: number, length: number): Promise<void> {
    await discardRange(this.ctx, this.state, pos, length);
    this.state.mtime = this.ctx.clock.now();
  }

  /** Make every acknowledged write durable (the whole store's: durable.ts); undefined: done already. */
  flush(): Promise<void> | undefined {
    return flushStoreNow(this.ctx) ? undefined : flushStore(this.ctx);
  }

  /** Some file handle has the disk open (pin). */
  isOpen(): boolean {
    return this.state.isOpen();
  }

  /**
   * The uids of the snapshots whose exact content the disk holds (restored or rolled back to and unchanged
   * since; its latest snapshot when nothing changed since it: identity.ts).
   */
  holds(): Promise<string[]> {
    return heldContent(this.state);
  }

  /** Last modification (ms). */
  get mtime(): number {
    return this.state.mtime;
  }

  /** The snapshot a clone reads its holes from, as a view (undefined: not a clone, or its backing is gone). */
  backing(): View | undefined {
    const o = this.ctx.backingOf(this.state);
    return o ? new View(this.ctx, o.origin, o.snap.id) : undefined;
  }

  /** The names of the disk's snapshots, oldest first. */
  snapshotNames(): string[] {
    return this.state.rec.snapshots.map((s) => s.name);
  }

  /** The disk's snapshots, oldest first, as views. */
  snapshots(): View[] {
    return this.state.rec.snapshots.map((s) => new View(this.ctx, this.state, s.id));
  }
}
