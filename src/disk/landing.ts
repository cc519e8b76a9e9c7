/**
 * Blocks arriving from outside (a restore): each is staged into a fresh physical block as it streams in,
 * invisible to every disk until one batch makes them a disk's content (asNewDisk, into); a landing that
 * never commits frees them (release). The pool, the tables and the disk's claim are handled here, so the
 * restore layer above only parses and validates images.
 */
import { DiskState, type Context } from './context.js';
import type { BlockStore } from '../store/blockStore.js';
import type { DiskRecord, SnapshotRecord } from '../meta/records.js';
import { checkDeletable, rollbackHeld, snapshotCommitted, snapshotRecord, type SnapshotIdentity } from './snapshots.js';
import type { BatchOp } from '../meta/table.js';
import { busy } from '../errors.js';
import { blocksFor } from '../util/range.js';
import { claimed, dropClaim } from './identity.js';
import { collectView } from './viewScan.js';
import { Transaction } from './commit.js';
import { Disk } from './view.js';
import { sealedEntry, sumsIfOn } from './sums.js';

/** Block writes kept in flight at most when the store cannot stage them (page-cache pool files). */
const MAX_WRITES_IN_FLIGHT = 32;

/**
 * What a landing becomes: a disk of this size holding the exact content of the source's snapshot
 * `snapshot`, which the disk then has too, under the source's name and uid (unless it has it already):
 * a delta taken from it on either side applies on the other (disk/identity.ts).
 */
export interface Content {
  size: number;
  snapshot: SnapshotIdentity;
}

/** What must happen to the disk before an image lands in it (decided by the restore layer's apply rules). */
export interface IntoPlan {
  /** Roll the disk back to its snapshot with this uid first, deleting the newer ones (recv -F). */
  rollbackTo?: string;
}

/** The lbns sorted, and each of `cols` (parallel to lbns) in the same order. */
export function byLbn<T extends unknown[][]>(lbns: number[], ...cols: T): [number[], ...T] {
  const idx = lbns.map((_, i) => i).sort((a, b) => lbns[a]! - lbns[b]!);
  return [idx.map((i) => lbns[i]!), ...(cols.map((c) => idx.map((i) => c[i])) as T)];
}

export class Landing {
  lbns: number[] = [];
  pbns: number[] = [];
  /** Each landed block's checksums (sums.ts), computed as it streams in. */
  sums: (string | undefined)[] = [];
  private committed = false;
  // Block writes in flight (with O_DIRECT pool files each unstaged one is a disk round trip); every one has
  // settled before the commit, and the first failure fails the landing. A store that stages writes
  // (stageBehind: copied at once into 1 MiB runs of adjacent blocks, written behind) gets the blocks that
  // way, and the caller waits only when no run is free; one promise per run, not per block.
  private writing: Promise<void>[] = [];
  private lastRun: Promise<void> | undefined;

  private constructor(
    private readonly ctx: Context,
    readonly blockSize: number,
    private readonly store: BlockStore,
  ) {}

  static async open(ctx: Context, blockSize: number): Promise<Landing> {
    return new Landing(ctx, blockSize, await ctx.pool.store(blockSize));
  }

  /**
   * Stage block lbn's data (blockSize bytes; the caller may reuse its buffer once this returns or resolves).
   * `sectorCrcs`: the CRC-32 of each of its sectors (sums.ts SECTOR), when the caller has them.
   */
  put(lbn: number, data: Buffer, sectorCrcs?: Uint32Array): void | Promise<void> {
    const bs = this.blockSize;
    const pbn = this.ctx.pool.allocate(bs);
    this.pbns.push(pbn);
    this.lbns.push(lbn);
    this.sums.push(sumsIfOn(this.ctx, data, sectorCrcs));
    const st = this.store;
    if (st.stageBehind && st.behindRoom) {
      // fresh: the open run takes the block while it has room, so the blocks go in whole runs
      if (st.behindRoom(bs, true)) return this.track(st.stageBehind(pbn, data)());
      // no room: wait for the oldest run, then stage (one wait per run, not per block)
      return this.waitUntil(() => st.behindRoom!(bs, true)).then(() => {
        if (st.behindRoom!(bs, true)) this.track(st.stageBehind!(pbn, data)());
        else this.track(st.write(pbn, Buffer.from(data))); // the runs are another writer's: write waits for one
      });
    }
    this.track(st.write(pbn, Buffer.from(data))); // a private copy: the caller's buffer is not ours
    if (this.writing.length >= MAX_WRITES_IN_FLIGHT) return this.waitUntil(() => this.writing.length < MAX_WRITES_IN_FLIGHT / 2);
  }

  /** Every staged block is written (or the first failure is thrown). */
  async settle(): Promise<void> {
    const r = await Promise.allSettled(this.writing.splice(0));
    const bad = r.find((x): x is PromiseRejectedResult => x.status === 'rejected');
    if (bad) throw bad.reason;
  }

  /** Order the blocks by lbn (images of version 2 list them in their source's physical order). */
  sortByLbn(): void {
    [this.lbns, this.pbns, this.sums] = byLbn(this.lbns, this.pbns, this.sums);
  }

  /** A new disk `name` whose content is exactly the landed blocks (settled before). */
  async asNewDisk(name: string, c: Content): Promise<void> {
    const ctx = this.ctx;
    const base = ctx.newDiskRecord(name, c.size, this.blockSize);
    const d = new DiskState(base, ctx);
    const { snap, rec } = snapshotRecord(ctx, d, c.snapshot, base);
    d.rec = claimed(rec, c.snapshot.uid);
    const ops: BatchOp[] = [ctx.recordOp(d.rec), ctx.seqOp()];
    // Written in the snapshot's epoch: the disk and its received snapshot share every block.
    for (let i = 0; i < this.lbns.length; i++) ops.push(d.live.putOp(this.lbns[i]!, sealedEntry(ctx, this.pbns[i]!, snap.epoch, this.sums[i])));
    await ctx.commit(ops, true);
    this.committed = true;
    d.allocated = this.lbns.length;
    snapshotCommitted(d, snap);
    ctx.disks.set(name, d);
  }

  /**
   * The landed blocks become disk `name`'s content at their lbns: `zeros` become holes, and so does every
   * other block of the disk when `full` (a delta keeps them, past the new end excepted). `check` runs once
   * nothing else can change the disk (its gate held): it may refuse, or ask for a rollback first (IntoPlan).
   * The disk's claim ends first; the final batch records the new one with the size and the received
   * snapshot: the disk never claims content it does not hold.
   */
  async into(name: string, c: Content & { full: boolean; zeros: number[] }, check: (d: Disk) => Promise<IntoPlan>): Promise<void> {
    const ctx = this.ctx;
    const d = ctx.disk(name);
    const inImage = new Set(this.lbns);
    const newBlocks = blocksFor(c.size, this.blockSize);
    await d.changing(true, async () => {
      // While the image streamed in, the disk may have been opened, written and closed again.
      if (d.isOpen()) throw busy(`disk ${name} is open`);
      const plan = await check(new Disk(ctx, d));
      const k = plan.rollbackTo !== undefined ? d.rec.snapshots.findIndex((s) => s.uid === plan.rollbackTo) : -1;
      const destroy = k >= 0 ? d.rec.snapshots.slice(k + 1) : [];
      for (const s of destroy) checkDeletable(ctx, d, s); // before anything changes
      await dropClaim(ctx, d);
      await ctx.drain();
      try {
        if (k >= 0) {
          await rollbackHeld(ctx, d, d.rec.snapshots[k]!, destroy);
          await dropClaim(ctx, d); // the content changes again below
        }
        const current = await collectView(ctx, d, -1, true);
        const extraZeros = current.lbns.filter((lbn) => !inImage.has(lbn) && (c.full || lbn >= newBlocks));
        const zeroSet = [...new Set([...c.zeros, ...extraZeros])].sort((a, b) => a - b);
        const epoch = d.rec.epoch;
        const hasBacking = d.rec.backing !== undefined;
        const tx = new Transaction(ctx, d);
        for (let i = 0; i < this.lbns.length; i++) await tx.set(this.lbns[i]!, sealedEntry(ctx, this.pbns[i]!, epoch, this.sums[i]));
        for (const lbn of zeroSet) await tx.zero(lbn, hasBacking && lbn < newBlocks);
        let rec: DiskRecord = { ...d.rec, size: c.size };
        if (rec.backing) rec.backing = { ...rec.backing, limitBlocks: Math.min(rec.backing.limitBlocks, newBlocks) };
        // The received snapshot, unless the disk has it already (a backup of its own put back).
        let snap: SnapshotRecord | undefined;
        if (!d.rec.snapshots.some((s) => s.uid === c.snapshot.uid)) ({ snap, rec } = snapshotRecord(ctx, d, c.snapshot, rec));
        await tx.commit({ record: rec, claim: c.snapshot.uid, ...(snap ? { extra: [ctx.seqOp()] } : {}) });
        if (snap) snapshotCommitted(d, snap);
        this.committed = true;
      } finally {
        d.changed();
      }
    });
  }

  /** Done with the landing: blocks that were not committed are freed once no write to them is in flight. */
  async release(): Promise<void> {
    await Promise.allSettled(this.writing);
    if (!this.committed) for (const pbn of this.pbns) this.ctx.pool.free(this.blockSize, pbn);
  }

  private track(w: Promise<void>): void {
    if (w === this.lastRun) return;
    this.lastRun = w;
    w.catch(() => undefined); // a failure is reported by settle, not as an unhandled rejection first
    this.writing.push(w);
  }

  /** Wait for the oldest writes until `ready()` (or nothing is left in flight). */
  private async waitUntil(ready: () => boolean): Promise<void> {
    while (!ready() && this.writing.length > 0) {
      const w = this.writing.shift()!;
      try {
        await w;
      } catch (e) {
        this.writing.unshift(w); // still reported by settle
        throw e;
      }
    }
  }
}
