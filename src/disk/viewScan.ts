/**
 * Enumerate the data blocks of a view (a snapshot, or the live disk) in ascending logical order by
 * merging the tables of its read chain: the view's own table, newer snapshots' tables, the live table and,
 * for clones, the backing snapshot's view (lowest priority). For each lbn the highest-priority table that
 * has an entry decides. Memory: one iterator per table. The iterators are all created in one tick under the
 * disk's exclusive gate after the commit pipeline drained, so they read one consistent state.
 */
import type { Context, DiskState } from './context.js';
import { decodeEntry, lbnOfKey, prefixEnd, type DataEntry, type Entry } from '../meta/keys.js';
import { blocksFor } from '../util/range.js';
import { backingLimit, chainTables } from './resolve.js';

export interface ViewBlock {
  lbn: number;
  pbn: number;
  /** The entry (with the block's checksums). */
  entry: DataEntry;
}

type Source = AsyncIterator<[number, Entry]>;

function tableIterator(ctx: Context, prefix: string): Source {
  const it = ctx.db.iterator({ gte: prefix, lt: prefixEnd(prefix) });
  const gen = (async function* () {
    try {
      for await (const [k, v] of it) yield [lbnOfKey(k), decodeEntry(v)] as [number, Entry];
    } finally {
      await it.close().catch(() => undefined);
    }
  })();
  return gen;
}

/** Create the iterators of a view (recursively for backings). Call with the gates held and queue drained. */
function openSources(ctx: Context, disk: DiskState, snapIndex: number): { sources: Source[]; backing?: AsyncIterator<ViewBlock>; limit: number; blocks: number } {
  const snaps = disk.rec.snapshots;
  const sources: Source[] = chainTables(disk, snapIndex).map((t) => tableIterator(ctx, t.prefix));
  const size = snapIndex >= 0 ? snaps[snapIndex]!.size : disk.rec.size;
  const limit = backingLimit(disk, snapIndex);
  const o = ctx.backingOf(disk);
  const backing: AsyncIterator<ViewBlock> | undefined = o ? merge(openSources(ctx, o.origin, o.index)) : undefined;
  return { sources, ...(backing ? { backing } : {}), limit, blocks: blocksFor(size, disk.blockSize) };
}

async function* merge(o: ReturnType<typeof openSources>): AsyncGenerator<ViewBlock> {
  const heads: ([number, Entry] | null)[] = [];
  for (const s of o.sources) {
    const r = await s.next();
    heads.push(r.done ? null : r.value);
  }
  let bhead: ViewBlock | null = null;
  if (o.backing) {
    const r = await o.backing.next();
    bhead = r.done ? null : r.value;
  }
  for (;;) {
    let min = Infinity;
    for (const h of heads) if (h && h[0] < min) min = h[0];
    if (bhead && bhead.lbn < min) min = bhead.lbn;
    if (min === Infinity || min >= o.blocks) break;
    let decided: Entry | undefined;
    for (let i = 0; i < heads.length; i++) {
      const h = heads[i];
      if (h && h[0] === min) {
        if (!decided) decided = h[1];
        const r = await o.sources[i]!.next();
        heads[i] = r.done ? null : r.value;
      }
    }
    let fromBacking: ViewBlock | undefined;
    if (bhead && bhead.lbn === min) {
      fromBacking = bhead;
      const r = await o.backing!.next();
      bhead = r.done ? null : r.value;
    }
    if (decided?.kind === 'data') yield { lbn: min, pbn: decided.pbn, entry: decided };
    else if ((!decided || decided.kind === 'inherit') && fromBacking && min < o.limit) yield fromBacking;
  }
  for (const s of o.sources) await s.return?.(undefined);
  await o.backing?.return?.(undefined);
}

/** Disks whose gates must be held for a consistent scan of this view (the disk and its backing chain). */
function chainDisks(ctx: Context, disk: DiskState): DiskState[] {
  const out = [disk];
  let b = disk.rec.backing;
  while (b) {
    const o = ctx.diskById(b.diskId);
    if (!o) break;
    out.push(o);
    b = o.rec.backing;
  }
  return out;
}

/**
 * Collect the data blocks of a view into arrays (for planning an image). It holds the gates of the disk
 * and its backing chain while it opens its iterators; a caller that holds the disk's gate exclusively
 * already says `gateHeld` (the backing chain's gates are still taken, in the same order).
 */
export async function collectView(ctx: Context, disk: DiskState, snapIndex: number, gateHeld = false): Promise<{ lbns: number[]; pbns: number[]; entries: DataEntry[] }> {
  const disks = chainDisks(ctx, disk).slice(gateHeld ? 1 : 0);
  let gen!: AsyncGenerator<ViewBlock>;
  const hold = async (i: number): Promise<void> => {
    if (i === disks.length) {
      await ctx.drain();
      gen = merge(openSources(ctx, disk, snapIndex));
      return;
    }
    await disks[i]!.gate.exclusively(() => hold(i + 1));
  };
  await hold(0);
  const lbns: number[] = [];
  const pbns: number[] = [];
  const entries: DataEntry[] = [];
  for await (const b of gen) {
    lbns.push(b.lbn);
    pbns.push(b.pbn);
    entries.push(b.entry);
  }
  return { lbns, pbns, entries };
}
