/**
 * `vdiskfs check`: verify a store that is not mounted (qemu-img check / thin_check habits).
 * Errors: table entries that cannot be decoded, physical blocks referenced twice, disk records that
 * contradict each other (unknown backing, epochs out of order), and (LevelDB bottom) referenced blocks
 * without a value, and referenced blocks past the end of a pool file (or in a missing one) below the length
 * recorded as synced (meta!pool!). Warnings: such blocks past that length (they read as zeros; after a power
 * cut, data written since the last fsync). Leaks: keys of tables whose disk or snapshot is gone (their
 * blocks are already free by construction; the keys only waste space), pool-file space past the highest
 * referenced block, and (LevelDB bottom) block values no table references.
 * Repair: purges orphaned keys and block values and truncates pool files; errors are reported, never
 * guessed at.
 * Cost: one pass over the tables and an allocator bitmap per block size; with the LevelDB bottom also one
 * pass over the block values' keys (which reads the whole database).
 */
import { stat, truncate } from 'node:fs/promises';
import { join } from 'node:path';
import { Registry } from '../disk/registry.js';
import { purgeOrphans } from '../disk/scan.js';
import { sweepBlocks } from '../store/levelBlocks.js';
import { sweepObjects } from '../store/radosBlocks.js';
import type { BlockStoreKind } from '../meta/records.js';
import type { Context } from '../disk/context.js';
import type { Table } from '../meta/table.js';
import { scrubDisks, type DamagedBlock } from '../disk/scrub.js';

export interface CheckReport {
  disks: number;
  snapshots: number;
  entries: number;
  dataBlocks: number;
  errors: string[];
  /** Facts that need no repair but deserve a look (data lost to a power cut since the last fsync). */
  warnings: string[];
  leaks: string[];
  repaired: string[];
  /** Bytes of block data stored: pool file sizes, or block values in LevelDB (before any repair). */
  poolBytes: number;
  usedBytes: number;
  blockStore: BlockStoreKind;
  /** With --verify-data: blocks read and checked, blocks without trusted checksums, damaged blocks. */
  data?: { verified: number; unverified: number; damaged: DamagedBlock[] };
}

/** Referenced blocks of `bs` bytes past `size` bytes of their pool file, by pbn, each with its owner's name. */
async function blocksPastEnd(ctx: Context, bs: number, size: number): Promise<Map<number, string>> {
  const out = new Map<number, string>();
  for (const d of ctx.disks.values()) {
    if (d.blockSize !== bs) continue;
    const tables: [Table, string][] = [[d.live, d.rec.name], ...d.rec.snapshots.map((s): [Table, string] => [d.snapTable(s.id), `${d.rec.name}@${s.name}`])];
    for (const [t, name] of tables) {
      for await (const [, e] of t.entries()) if (e.kind === 'data' && (e.pbn + 1) * bs > size) out.set(e.pbn, name);
    }
  }
  return out;
}

/**
 * Blocks referenced past the end of a pool file read as zeros. Below the length known synced (meta!pool!,
 * written after an fsync's pool flush) they were durable once: the file was cut or removed, an error. Past
 * it, they are data written since the last fsync whose table entries reached the disk before the data did
 * (a power cut): allowed, a warning.
 */
function pastEnd(r: CheckReport, blocks: Map<number, string>, bs: number, size: number, synced: number): void {
  const file = `pool-${bs}.dat`;
  const lost = new Map<string, number>();
  let unsynced = 0;
  for (const [pbn, owner] of blocks) {
    if ((pbn + 1) * bs <= synced) lost.set(owner, (lost.get(owner) ?? 0) + 1);
    else unsynced++;
  }
  const what = size < 0 ? `${file} is missing` : `${file} is ${size} bytes`;
  const n = [...lost.values()].reduce((a, b) => a + b, 0);
  if (n) r.errors.push(`${what}, shorter than the ${synced} bytes known synced: ${n} referenced block(s) lost, read as zeros (${[...lost].map(([o, c]) => `${o}: ${c}`).join(', ')})`);
  if (unsynced) r.warnings.push(`${what}: ${unsynced} referenced block(s) past its end written since its last fsync read as zeros (lost by a power cut?)`);
}

export async function checkStore(dir: string, opts: { repair?: boolean; verifyData?: boolean } = {}): Promise<CheckReport> {
  const reg = await Registry.open({ dir, purge: false });
  try {
    const ctx = reg.ctx;
    const scan = reg.scan;
    const r: CheckReport = { disks: ctx.disks.size, snapshots: 0, entries: scan.entries, dataBlocks: scan.dataBlocks, errors: [], warnings: [], leaks: [], repaired: [], poolBytes: 0, usedBytes: ctx.pool.usedBytes(), blockStore: reg.blockStore };
    for (const k of scan.badEntries) r.errors.push(`undecodable table entry ${k}`);
    for (const d of scan.doubleRefs) r.errors.push(`physical block ${d.pbn} referenced more than once (again by ${d.key})`);
    const ids = new Set<number>();
    for (const d of ctx.disks.values()) {
      r.snapshots += d.rec.snapshots.length;
      if (ids.has(d.rec.id)) r.errors.push(`disk id ${d.rec.id} used twice`);
      ids.add(d.rec.id);
      let prev = 0;
      for (const s of d.rec.snapshots) {
        if (s.epoch < prev || s.epoch >= d.rec.epoch) r.errors.push(`disk ${d.rec.name}: snapshot ${s.name} has epoch ${s.epoch} out of order`);
        prev = s.epoch;
        if (s.id >= ctx.seq.snap) r.errors.push(`disk ${d.rec.name}: snapshot ${s.name} id ${s.id} not below the sequence ${ctx.seq.snap}`);
      }
      if (d.rec.reverting !== undefined) {
        if (d.latest()?.id !== d.rec.reverting) r.errors.push(`disk ${d.rec.name}: a rollback to snapshot id ${d.rec.reverting} is unfinished, and that is not its latest snapshot`);
        else r.warnings.push(`disk ${d.rec.name}: a rollback to snapshot ${d.latest()!.name} is unfinished (it goes on when the store is mounted)`);
      }
      if (d.rec.id >= ctx.seq.disk) r.errors.push(`disk ${d.rec.name}: id ${d.rec.id} not below the sequence ${ctx.seq.disk}`);
      const b = d.rec.backing;
      if (b) {
        if (!ctx.backingOf(d)) r.errors.push(`clone ${d.rec.name}: its backing snapshot (disk ${b.diskId}, snapshot ${b.snapId}) is missing`);
      }
    }
    const sizes = new Set([...ctx.disks.values()].map((d) => d.blockSize));
    if (reg.blockStore === 'leveldb' || reg.blockStore === 'rados') {
      // Stores that keep space per block (values in LevelDB, objects in Ceph): every referenced block must
      // have its value or object (LevelDB's log keeps a block's put ahead of the batch that references it
      // even across a power cut, and a rados batch waits for its replicated writes: a missing one is damage,
      // not lost unsynced data); ones no table references are leaks (a crash), removed with --repair.
      const dryRun = !opts.repair;
      const [sweep, words] =
        reg.blockStore === 'leveldb'
          ? [await sweepBlocks(ctx.db, (bs, pbn) => ctx.pool.isUsed(bs, pbn), { dryRun }), { what: 'value', where: 'LevelDB', removed: 'deleted' }]
          : [await sweepObjects(ctx.pool, sizes, { dryRun }), { what: 'object', where: 'Ceph', removed: 'removed' }];
      for (const [bs, n] of sweep.present) r.poolBytes += n * bs;
      r.poolBytes += sweep.orphanBytes;
      for (const bs of sizes) {
        const missing = ctx.pool.usedBlocks(bs) - (sweep.present.get(bs) ?? 0);
        if (missing > 0) r.errors.push(`${missing} referenced block(s) of ${bs} bytes have no ${words.what} in ${words.where} (they read as zeros)`);
      }
      if (sweep.orphans) {
        r.leaks.push(`${sweep.orphans} block ${words.what}s (${sweep.orphanBytes} bytes) in ${words.where} that no table references`);
        if (opts.repair) r.repaired.push(`${words.removed} ${sweep.orphans} unreferenced block ${words.what}s`);
      }
    }
    // Every referenced block must lie inside its pool file; space past the highest one is reclaimable.
    for (const bs of reg.blockStore === 'file' ? sizes : []) {
      const file = join(dir, `pool-${bs}.dat`);
      const size = await stat(file).then((s) => s.size, () => -1);
      r.poolBytes += Math.max(0, size);
      const hw = ctx.pool.allocator(bs).highWater;
      if (hw * bs > size) pastEnd(r, await blocksPastEnd(ctx, bs, Math.max(0, size)), bs, size, ctx.syncedLength.get(bs) ?? 0);
      else if (size > hw * bs) {
        r.leaks.push(`pool-${bs}.dat: ${size - hw * bs} bytes past the last referenced block`);
        if (opts.repair) {
          await truncate(file, hw * bs);
          r.repaired.push(`truncated pool-${bs}.dat to ${hw * bs} bytes`);
        }
      }
    }
    if (opts.verifyData) {
      // Every referenced block read back against its checksums (scrub.ts, read only).
      const v = await scrubDisks(ctx, [...ctx.disks.values()], { seal: false });
      r.data = { verified: v.verified, unverified: v.unverified, damaged: v.damaged };
      for (const d of v.damaged) r.errors.push(`damaged block: ${d.view} at byte ${d.offset} (block ${d.lbn}, pool block ${d.pbn}): checksum mismatch in the sector at byte ${d.sector} of the block`);
    }
    if (scan.orphanTables.size) {
      r.leaks.push(`${scan.orphanEntries} table entries of ${scan.orphanTables.size} deleted disks/snapshots`);
      if (opts.repair) {
        const n = await purgeOrphans(ctx, scan.orphanTables);
        r.repaired.push(`purged ${n} orphaned table entries`);
      }
    }
    return r;
  } finally {
    await reg.close();
  }
}

export function renderCheck(r: CheckReport): string {
  const lines = [
    `disks: ${r.disks}, snapshots: ${r.snapshots}, table entries: ${r.entries}, data blocks: ${r.dataBlocks}`,
    `pool: ${r.usedBytes} bytes referenced, ${r.poolBytes} bytes ${r.blockStore === 'leveldb' ? 'of block values in LevelDB' : r.blockStore === 'rados' ? 'in RADOS objects' : 'in pool files'}`,
    ...(r.data ? [`data: ${r.data.verified} block(s) verified against their checksums, ${r.data.damaged.length} damaged, ${r.data.unverified} without trusted checksums (written in place and not sealed yet, from an older store, or written since the last fsync before a crash: a scrub seals them)`] : []),
    ...r.errors.map((e) => `ERROR: ${e}`),
    ...r.warnings.map((w) => `WARNING: ${w}`),
    ...r.leaks.map((l) => `LEAK: ${l}`),
    ...r.repaired.map((l) => `REPAIRED: ${l}`),
    `${r.errors.length} errors, ${r.leaks.length} leaks${r.repaired.length ? `, ${r.repaired.length} repaired` : ''}`,
  ];
  return lines.join('\n') + '\n';
}
