/**
 * Making acknowledged writes durable (fsync of a disk, `sync`, unmount): the one statement of the order.
 * The pool's data is flushed (fdatasync), then the tables that point at it (LevelDB's log), so a table
 * entry is never durable before the data it points at. When every pool store writes through to the device
 * (O_DIRECT), the two flushes run side by side: a batch is written to LevelDB only after the pool writes it
 * references have completed (Context.commit's `ready`), so those writes are already on the device and any
 * device flush that makes the batch durable makes them durable too; the flush still resolves only when both
 * are done. A flush with no table change since the last one flushes the pool only (Context.commit).
 */
import { VdiskError } from '../errors.js';
import type { Context } from './context.js';
import { GEN_KEY, poolSyncedKey } from '../meta/keys.js';

export async function flushStore(ctx: Context): Promise<void> {
  // The pool files' lengths, read before the flush below starts (all of it is durable once it is done), and
  // side by side with the drain, so that the file stat adds no wait of its own when the drain has work.
  const lengthsRead = ctx.pool.lengths().catch(() => null);
  // Checksums staged before this point settle with this flush (sums.ts); those staged from now on get the
  // next generation. The settled mark rides the synced batch below, after the pool flush (or, writing
  // through, after the pool writes completed, like every batch's data).
  const integ = ctx.integrity;
  const settling = integ.used ? integ.gen : undefined;
  if (settling !== undefined) {
    integ.gen++;
    integ.used = false;
  }
  await ctx.drain();
  checkFailure(ctx);
  const lengths = await lengthsRead;
  const marked = (): void => {
    if (settling !== undefined) ctx.syncedMarks.set(GEN_KEY, JSON.stringify({ ...integ.record(false), settled: Math.max(integ.settled, settling) }));
  };
  if (ctx.pool.writesThrough()) {
    marked();
    await Promise.all([ctx.pool.sync(), ctx.commit([], true)]);
  } else {
    await ctx.pool.sync();
    marked();
    await ctx.commit([], true);
  }
  if (settling !== undefined) integ.settled = Math.max(integ.settled, settling);
  if (lengths) recordSynced(ctx, lengths);
}

/**
 * Record pool-file lengths that are now synced (meta!pool!, see keys.ts) where they grew. They ride with the
 * next synced batch (Context.syncedMarks) instead of a batch of their own; a mark that lags is safe: it only
 * ever understates.
 */
function recordSynced(ctx: Context, lengths: Map<number, number>): void {
  for (const [bs, len] of lengths) {
    if (len <= (ctx.syncedLength.get(bs) ?? 0)) continue;
    ctx.syncedLength.set(bs, len);
    ctx.syncedMarks.set(poolSyncedKey(bs), String(len));
  }
}

/**
 * At a clean close, once the pool is flushed and before close() cuts the pool files to their blocks in use
 * (`ends`: block size -> bytes): those lengths are the synced ones, recorded durably (lower than before after
 * deletes, so that `check` never takes later unsynced growth for lost data; higher after writes).
 */
export async function recordClosed(ctx: Context, ends: Map<number, number>): Promise<void> {
  for (const [bs, end] of ends) {
    ctx.syncedLength.set(bs, end);
    ctx.syncedMarks.set(poolSyncedKey(bs), String(end));
  }
  // The pool is flushed: every checksum staged so far is settled, and the session ends cleanly (sums.ts).
  const integ = ctx.integrity;
  ctx.syncedMarks.set(GEN_KEY, JSON.stringify({ ...integ.record(true), settled: integ.gen }));
  await ctx.commit([], true);
  integ.settled = integ.gen; // writes the marks (Context.pump), with any still waiting from recordSynced
}

/**
 * flushStore without an await, when it can be: no table change waits to be made durable and the pool can
 * flush on this thread (Pool.syncNow: nothing in flight). The steady state of a database (overwrites in
 * place, then fsync) takes this path: the write and the flush are two syscalls instead of two thread-pool
 * round trips. False: nothing was done, call flushStore.
 */
export function flushStoreNow(ctx: Context): boolean {
  checkFailure(ctx);
  if (!ctx.settled) return false;
  return ctx.pool.syncNow();
}

/** A metadata batch that failed after its writes were acknowledged makes every later flush fail. */
function checkFailure(ctx: Context): void {
  if (ctx.failure) throw new VdiskError('IO', `a metadata commit failed; acknowledged writes may be lost: ${ctx.failure.message}`);
}
