/** Status of the store (disks, snapshots, pool) as a JSON object and as a human table. */
import type { Registry } from '../disk/registry.js';
import { formatSize } from '../util/size.js';
import type { BlockStoreKind, RadosRecord } from '../meta/records.js';
import { logPath } from '../meta/db.js';

export interface SnapshotStatus { name: string; id: string; created: string; size: number; heldBytes: number }
export interface DiskStatus {
  name: string;
  size: number;
  blockSize: number;
  allocatedBytes: number;
  created: string;
  clonedFrom?: string;
  restoredFrom?: string;
  /** A rollback to this snapshot is still moving its entries back (the disk already reads as it). */
  rollingBackTo?: string;
  snapshots: SnapshotStatus[];
}
export interface StoreStatus {
  /** blockStore: where block data lives (`file`: pool files, `leveldb`: values in the store's LevelDB). */
  pool: { capacity: number | null; usedBytes: number; freeBytes: number | null; blockStore: BlockStoreKind; rados?: RadosRecord };
  disks: DiskStatus[];
  /**
   * Block checksums (disk/sums.ts): `damaged`: blocks whose checksum did not match since the store was
   * opened (reads got EIO), the latest of them in `recent`; `unverified`: live blocks without trusted
   * checksums waiting for the sealer (written in place, from an older store, or left by a crash);
   * `scrub`: the scrub running or last run.
   */
  checksums: {
    enabled: boolean;
    damaged: number;
    recent: { where: string; time: string }[];
    unverified: number;
    scrub?: { what: string; started: string; finished: string | null; blocks: number; total: number; verified: number; sealed: number; damaged: { view: string; offset: number }[]; summary: string };
  };
  /**
   * The cache of table entries (meta/table.ts): entries and bytes held, its budget (`--table-cache`), and
   * the table lookups since the store was opened, with how many it answered without reading LevelDB.
   */
  tableCache: { entries: number; bytes: number; maxBytes: number; lookups: number; found: number };
  /** The daemon's log file (JSON lines), STORE/vdiskfs.log. */
  log: string;
}

export function storeStatus(reg: Registry): StoreStatus {
  const disks: DiskStatus[] = reg.names().map((name) => {
    const disk = reg.diskView(name);
    const rec = disk.state.rec;
    const b = disk.backing();
    const clonedFrom = rec.backing ? (b?.name ?? 'unknown') : undefined;
    return {
      name,
      size: disk.size(),
      blockSize: disk.blockSize,
      allocatedBytes: disk.heldBytes(),
      created: new Date(rec.created).toISOString(),
      ...(clonedFrom ? { clonedFrom } : {}),
      ...(rec.contentUid ? { restoredFrom: rec.contentUid } : {}),
      ...(rec.reverting !== undefined ? { rollingBackTo: rec.snapshots.find((s) => s.id === rec.reverting)?.name ?? String(rec.reverting) } : {}),
      snapshots: disk.snapshots().map((v) => {
        const s = v.snapshot()!;
        return { name: s.name, id: s.uid, created: new Date(s.created).toISOString(), size: s.size, heldBytes: v.heldBytes() };
      }),
    };
  });
  const { usedBytes: used, capacity: cap } = reg.poolUsage();
  const integ = reg.ctx.integrity;
  const job = reg.scrubJob;
  const checksums: StoreStatus['checksums'] = {
    enabled: integ.enabled,
    damaged: integ.errors,
    recent: [...integ.recent],
    unverified: reg.names().reduce((n, name) => n + reg.disk(name).dirty.size, 0),
    ...(job
      ? { scrub: { what: job.what, started: job.started, finished: job.finished, blocks: job.blocks, total: job.total, verified: job.report.verified, sealed: job.report.sealed, damaged: job.report.damaged.map((d) => ({ view: d.view, offset: d.offset })), summary: job.summary() } }
      : {}),
  };
  return {
    checksums,
    pool: { capacity: Number.isFinite(cap) ? cap : null, usedBytes: used, freeBytes: Number.isFinite(cap) ? Math.max(0, cap - used) : null, blockStore: reg.blockStore, ...(reg.rados ? { rados: reg.rados } : {}) },
    disks,
    tableCache: reg.ctx.cache.size,
    log: logPath(reg.dir),
  };
}

export function renderStatus(st: StoreStatus): string {
  const rows: string[][] = [['DISK', 'SIZE', 'BLOCK', 'ALLOCATED', 'SNAPSHOTS', 'NOTE']];
  for (const d of st.disks) {
    const note = [d.clonedFrom ? `clone of ${d.clonedFrom}` : d.restoredFrom ? `holds image ${d.restoredFrom}` : '', d.rollingBackTo ? `rolling back to @${d.rollingBackTo}` : ''].filter(Boolean).join('; ');
    rows.push([d.name, formatSize(d.size), formatSize(d.blockSize), formatSize(d.allocatedBytes), String(d.snapshots.length), note]);
    for (const s of d.snapshots) rows.push([`  @${s.name}`, formatSize(s.size), '', formatSize(s.heldBytes), s.created, s.id]);
  }
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  const lines = rows.map((r) => r.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd());
  const p = st.pool;
  lines.push('');
  lines.push(`pool: ${formatSize(p.usedBytes)} used` + (p.capacity !== null ? ` of ${formatSize(p.capacity)} (${formatSize(p.freeBytes ?? 0)} free)` : ' (no size limit)') + `, block data in ${p.blockStore === 'leveldb' ? 'LevelDB' : p.rados ? `RADOS objects (Ceph pool ${p.rados.pool}, objects ${p.rados.prefix}.*, ${p.rados.conf})` : 'pool files'}`);
  const c = st.checksums;
  lines.push(
    c.enabled
      ? `checksums: ${c.damaged} damaged block(s) read since mount${c.recent.length ? ` (latest: ${c.recent[c.recent.length - 1]!.where})` : ''}, ${c.unverified} live block(s) waiting to be sealed`
      : 'checksums: off (VDISKFS_CHECKSUMS=off)',
  );
  if (c.scrub) lines.push(c.scrub.summary);
  const t = st.tableCache;
  if (t.lookups > 0) {
    const pct = (100 * t.found) / t.lookups;
    lines.push(`table cache: ${t.entries} entries, ${formatSize(t.bytes)} of ${formatSize(t.maxBytes)}; ${pct.toFixed(pct >= 99.95 ? 0 : 1)}% of ${t.lookups} lookups since mount found in memory` + (t.bytes > 0.9 * t.maxBytes && pct < 90 ? ' (full: random I/O over more blocks than it holds reads the tables from disk; a larger --table-cache helps)' : ''));
  }
  lines.push(`log: ${st.log}`);
  return lines.join('\n') + '\n';
}
