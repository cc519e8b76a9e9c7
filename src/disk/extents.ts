/**
 * Where a view (the live disk, snapshot k, a clone) holds data and where it has holes — what lseek's
 * SEEK_DATA and SEEK_HOLE answer — from the allocation tables alone: no block is read, and the cost is
 * proportional to the table entries between the offset and the answer, never to the virtual size.
 *
 * A block reads data when the first table of its read chain that has an entry for it (snapshot k's, the
 * newer snapshots', the live table: see resolve.ts) holds a data entry, or when none has one (or that
 * entry is `inherit`) and the clone's backing view has data there, below the backing limit. Everything
 * else (no entry anywhere, a `zero` entry) is a hole. A data block that happens to contain zeros is data:
 * the answer is about allocation, as for any filesystem.
 *
 * The tables are read with Table.current() (LevelDB plus the changes staged but not committed yet), so a
 * write that was acknowledged is seen at once. The walk holds the disk's gate shared, like a read, so no
 * control operation (rollback, snapshot delete) rewrites the tables under it.
 */
import type { Context, DiskState } from './context.js';
import type { Entry } from '../meta/keys.js';
import { blocksFor } from '../util/range.js';
import { backingLimit, chainTables } from './resolve.js';

/**
 * The blocks from `from` on that some table of the view's chain (or its backing's data) mentions, in
 * ascending order, each with whether the view reads data there. Blocks not yielded are holes.
 */
async function* mapped(ctx: Context, disk: DiskState, snapIndex: number, from: number): AsyncGenerator<[number, boolean]> {
  const sources = chainTables(disk, snapIndex).map((t) => t.current(from));
  let backing: AsyncGenerator<[number, boolean]> | undefined;
  const limit = backingLimit(disk, snapIndex);
  const o = ctx.backingOf(disk);
  if (o && from < limit) backing = mapped(ctx, o.origin, o.index, from);
  try {
    const heads: ([number, Entry] | null)[] = [];
    for (const s of sources) {
      const r = await s.next();
      heads.push(r.done ? null : r.value);
    }
    const nextBacking = async (): Promise<[number, boolean] | null> => {
      if (!backing) return null;
      const r = await backing.next();
      return r.done || r.value[0] >= limit ? null : r.value;
    };
    let bhead = await nextBacking();
    for (;;) {
      let min = Infinity;
      for (const h of heads) if (h && h[0] < min) min = h[0];
      if (bhead && bhead[0] < min) min = bhead[0];
      if (min === Infinity) return;
      let decided: Entry | undefined;
      for (let i = 0; i < heads.length; i++) {
        const h = heads[i];
        if (h && h[0] === min) {
          decided ??= h[1];
          const r = await sources[i]!.next();
          heads[i] = r.done ? null : r.value;
        }
      }
      let backingData = false;
      if (bhead && bhead[0] === min) {
        backingData = bhead[1];
        bhead = await nextBacking();
      }
      if (decided?.kind === 'data') yield [min, true];
      else if (decided?.kind === 'zero') yield [min, false];
      else yield [min, backingData];
    }
  } finally {
    for (const s of sources) await s.return(undefined);
    await backing?.return(undefined);
  }
}

/**
 * lseek(SEEK_DATA / SEEK_HOLE) on a view: the first offset >= `offset` where data (or a hole) begins, or
 * null when there is none (ENXIO: `offset` at or past the end, or no data after it). The end of the view
 * counts as a hole, as for any file. Offsets are exact at the starting block and block-aligned after it.
 */
export async function seekView(ctx: Context, disk: DiskState, snapIndex: number, offset: number, what: 'data' | 'hole'): Promise<number | null> {
  if (!Number.isSafeInteger(offset) || offset < 0) return null;
  return disk.gate.run(async () => {
    const size = snapIndex >= 0 ? disk.rec.snapshots[snapIndex]!.size : disk.rec.size;
    if (offset >= size) return null;
    const bs = disk.blockSize;
    const blocks = blocksFor(size, bs);
    const start = Math.floor(offset / bs);
    const at = (lbn: number): number => Math.min(size, Math.max(offset, lbn * bs));
    if (what === 'data') {
      for await (const [lbn, data] of mapped(ctx, disk, snapIndex, start)) {
        if (lbn >= blocks) break;
        if (data) return at(lbn);
      }
      return null;
    }
    let c = start;
    for await (const [lbn, data] of mapped(ctx, disk, snapIndex, start)) {
      if (lbn >= blocks || lbn > c || !data) break; // c has no entry, or a hole's entry
      c = lbn + 1;
    }
    return c >= blocks ? size : at(c);
  });
}
