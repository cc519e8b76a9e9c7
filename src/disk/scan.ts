/**
 * The open-time scan: walk every live and snapshot table once, mark each referenced physical block in the
 * allocators, count allocated/held blocks, and find orphaned tables (of deleted disks or snapshots) and
 * double references. Memory: the allocator bitmaps plus a set of orphan ids. The same scan is the core of
 * `vdiskfs check`.
 */
import type { Context } from './context.js';
import { LIVE_TABLES, SNAP_TABLES, decodeEntry, idOfTableKey, lbnOfKey, prefixEnd } from '../meta/keys.js';

/** Live blocks queued for sealing at open, per disk at most (the rest wait for a scrub). */
const MAX_SEAL_QUEUE = 1_000_000;

export interface ScanReport {
  entries: number;
  dataBlocks: number;
  orphanTables: Set<string>;
  orphanEntries: number;
  doubleRefs: { key: string; pbn: number }[];
  badEntries: string[];
}

export async function scanTables(ctx: Context): Promise<ScanReport> {
  const report: ScanReport = { entries: 0, dataBlocks: 0, orphanTables: new Set(), orphanEntries: 0, doubleRefs: [], badEntries: [] };
  const liveOwner = new Map<number, { bs: number; name: string }>();
  const snapOwner = new Map<number, { bs: number; name: string; snapId: number }>();
  for (const d of ctx.disks.values()) {
    d.allocated = 0;
    d.held.clear();
    liveOwner.set(d.rec.id, { bs: d.blockSize, name: d.rec.name });
    for (const s of d.rec.snapshots) {
      snapOwner.set(s.id, { bs: d.blockSize, name: d.rec.name, snapId: s.id });
      d.held.set(s.id, 0);
    }
  }
  for (const prefix of [LIVE_TABLES, SNAP_TABLES] as const) {
    for await (const [key, value] of ctx.db.iterator({ gte: prefix, lt: prefixEnd(prefix) })) {
      report.entries++;
      const id = idOfTableKey(key);
      const owner = prefix === LIVE_TABLES ? liveOwner.get(id) : snapOwner.get(id);
      if (!owner) {
        report.orphanTables.add(key.slice(0, 11));
        report.orphanEntries++;
        continue;
      }
      let e;
      try {
        e = decodeEntry(value);
      } catch {
        report.badEntries.push(key);
        continue;
      }
      if (e.kind !== 'data') continue;
      report.dataBlocks++;
      if (!ctx.pool.allocator(owner.bs).mark(e.pbn)) report.doubleRefs.push({ key, pbn: e.pbn });
      const disk = ctx.disks.get(owner.name)!;
      if (prefix === LIVE_TABLES) {
        disk.allocated++;
        // Live blocks without trusted checksums (an older store, a crash before an fsync settled them):
        // the sealer gives them checksums in the background (scrub.ts); snapshots' blocks wait for a scrub.
        if (ctx.integrity.needsSeal(e) && disk.dirty.size < MAX_SEAL_QUEUE) disk.dirty.set(lbnOfKey(key), 0);
      } else disk.held.set(id, (disk.held.get(id) ?? 0) + 1);
    }
  }
  return report;
}

/** Delete the keys of orphaned tables, in bounded batches. Safe to interrupt: ids are never reused. */
export async function purgeOrphans(ctx: Context, prefixes: Iterable<string>): Promise<number> {
  let n = 0;
  for (const prefix of prefixes) {
    for (;;) {
      const keys: string[] = [];
      for await (const k of ctx.db.keys({ gte: prefix, lt: prefix + '~', limit: 10_000 })) keys.push(k);
      if (keys.length === 0) break;
      await ctx.db.batch(keys.map((key) => ({ type: 'del' as const, key })));
      n += keys.length;
    }
  }
  return n;
}
