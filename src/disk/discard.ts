/** Discarding a range of a disk (fallocate PUNCH_HOLE / ZERO_RANGE). */
import type { Context, DiskState } from './context.js';
import { invalid, VdiskError } from '../errors.js';
import { dropClaim } from './identity.js';
import { Transaction } from './commit.js';
import { collectView } from './viewScan.js';
import { writeExclusive } from './write.js';

/**
 * Discard [offset, offset + length) of the live disk (fallocate PUNCH_HOLE or ZERO_RANGE; the part past the
 * end is ignored): afterwards the range reads as zeros and holds no block. Whole blocks lose their live
 * entries as a zero write's would (a clone's get a `zero` entry that hides its backing); the partial blocks
 * at the ends are written with zeros (writeExclusive: freed if they become all zeros). The same rules as a
 * write: table changes go through one Transaction per batch (the latest snapshot keeps what it still sees, via
 * needsPreserve), and a block is freed only after the batch that dropped it commits. The disk's gate is
 * held exclusively (as resize does), so the scan of the table sees no write in flight. Cost: the table
 * entries in the range (and, for a clone, the data blocks of its backing), not the range's length.
 * Whole blocks are committed in batches of DISCARD_BATCH changes: a crash in between leaves a part of the
 * range discarded, each block either as it was or discarded.
 */
export async function discardRange(ctx: Context, disk: DiskState, offset: number, length: number): Promise<void> {
  if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length < 0) throw invalid(`bad range ${offset}+${length}`);
  if (ctx.failure) throw new VdiskError('IO', `store failed earlier and is read-only until remounted: ${ctx.failure.message}`);
  await disk.changing(true, async () => {
    const end = Math.min(offset + length, disk.rec.size);
    if (offset >= end) return;
    await dropClaim(ctx, disk);
    const bs = disk.blockSize;
    const first = Math.ceil(offset / bs); // first whole block
    const stop = Math.floor(end / bs); // after the last whole block
    if (first >= stop) return writeExclusive(ctx, disk, offset, Buffer.alloc(end - offset));
    if (offset < first * bs) await writeExclusive(ctx, disk, offset, Buffer.alloc(first * bs - offset));
    if (end > stop * bs) await writeExclusive(ctx, disk, stop * bs, Buffer.alloc(end - stop * bs));
    await ctx.drain();
    const b = disk.rec.backing;
    let tx = new Transaction(ctx, disk);
    const flush = async (): Promise<void> => {
      if (tx.changes.length) await tx.commit();
      tx = new Transaction(ctx, disk);
    };
    const seen = new Set<number>();
    for await (const [lbn, cur] of disk.live.entries(first)) {
      if (lbn >= stop) break;
      if (b) seen.add(lbn);
      await tx.zero(lbn, !!b, cur);
      if (tx.changes.length >= DISCARD_BATCH) await flush();
    }
    // A clone's holes read its backing: where the backing has data, they get a `zero` entry too.
    const backing = ctx.backingOf(disk);
    if (b && backing && first < b.limitBlocks) {
      await flush();
      for (const lbn of (await collectView(ctx, backing.origin, backing.index)).lbns) {
        if (lbn < first || lbn >= stop || lbn >= b.limitBlocks || seen.has(lbn)) continue;
        if ((await disk.live.get(lbn)) !== undefined) continue;
        await tx.zero(lbn, true);
        if (tx.changes.length >= DISCARD_BATCH) await flush();
      }
    }
    await flush();
  });
}

const DISCARD_BATCH = 8192;

