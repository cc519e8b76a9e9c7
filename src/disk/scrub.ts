/**
 * Reading blocks back against their checksums (sums.ts): the sealer (live blocks written in place get
 * checksums again once nobody has written them for SEAL_AFTER_MS), `scrub` (online: every referenced block
 * of a disk read and verified, unverified ones sealed, throttled, progress in status) and `check
 * --verify-data` (offline, read only). One walk serves scrub and check: every table of the disk (live and
 * snapshots), each physical block once (invariant 1 of KEYSPACE.md: one entry per block).
 */
import type { Context, DiskState } from './context.js';
import type { DataEntry } from '../meta/keys.js';
import type { Table } from '../meta/table.js';
import { mismatch, sumsOf } from './sums.js';
import { restamp } from './commit.js';
import { logger } from '../log.js';
import type { BlockStore } from '../store/blockStore.js';

const log = logger('scrub');

/** How long a live block written in place stays unverified at least (ms; VDISKFS_SEAL_AFTER_MS). */
export const SEAL_AFTER_MS = Number(process.env.VDISKFS_SEAL_AFTER_MS ?? 30_000);
/** Blocks a scrub reads at a time (as runs of adjacent blocks, all at once). */
const SCRUB_GROUP = 64;

/**
 * A reader of groups of blocks for scrub: the blocks of `pbns` in that order, the physically adjacent ones
 * read as one request (readRun, into aligned memory, where the store has it), all requests at once. The
 * returned buffers are valid until the next call.
 */
async function groupReader(store: BlockStore, bs: number): Promise<(pbns: number[]) => Promise<Buffer[]>> {
  const mem = store.allocAligned ? await store.allocAligned(SCRUB_GROUP * bs) : Buffer.allocUnsafe(SCRUB_GROUP * bs);
  return async (pbns) => {
    const order = pbns.map((_, i) => i).sort((a, b) => pbns[a]! - pbns[b]!);
    const slot = new Array<number>(pbns.length);
    order.forEach((i, k) => (slot[i] = k)); // block i goes to mem slot k: runs are contiguous in memory
    const reads: Promise<void>[] = [];
    for (let k = 0; k < order.length; ) {
      let n = 1;
      while (k + n < order.length && pbns[order[k + n]!] === pbns[order[k]!]! + n) n++;
      const dst = mem.subarray(k * bs, (k + n) * bs);
      const first = pbns[order[k]!]!;
      if (store.readRun && n > 1) reads.push(store.readRun(first, n, dst));
      else for (let b = 0; b < n; b++) reads.push(store.read(first + b, dst.subarray(b * bs, (b + 1) * bs), 0));
      k += n;
    }
    await Promise.all(reads);
    return pbns.map((_, i) => mem.subarray(slot[i]! * bs, (slot[i]! + 1) * bs));
  };
}
/** How long a clean close spends sealing blocks written in place at most (ms). */
const CLOSE_SEAL_MS = 2000;
/** Blocks sealed per pass of the sealer at most (each one a block read). */
const SEAL_BATCH = 256;

/** Give `cur` (lbn's entry in `table`) checksums of its block as it is now: read it back, commit them. */
async function reseal(ctx: Context, disk: DiskState, table: Table, lbn: number, cur: DataEntry): Promise<void> {
  const block = Buffer.allocUnsafe(disk.blockSize);
  const store = await ctx.pool.store(disk.blockSize);
  // Not through readahead: the sealer's reads in block order look sequential, and chunks read ahead for
  // them compete with the writers whose blocks the sealer visits
  await (store.readParallel ? store.readParallel(cur.pbn, block) : store.read(cur.pbn, block, 0));
  await restamp(ctx, table, lbn, { ...cur, sums: sumsOf(block), gen: ctx.integrity.stamp() });
}

/**
 * Seal the live block lbn of `disk` if it is still unverified and was not written since `since` (the time
 * the caller saw; undefined: whenever): read it back, compute its checksums, commit them (a generation that
 * settles at the next fsync). The block's lock is held throughout, so no write changes it in between.
 */
async function sealLive(ctx: Context, disk: DiskState, lbn: number, since: number | undefined): Promise<boolean> {
  return disk.changing(false, async () => {
    const release = await disk.lock.acquire(lbn);
    try {
      if (since !== undefined && disk.dirty.get(lbn) !== since) return false; // written again meanwhile
      const cur = await disk.live.get(lbn);
      if (cur?.kind !== 'data' || !ctx.integrity.needsSeal(cur)) {
        disk.dirty.delete(lbn);
        return false;
      }
      await reseal(ctx, disk, disk.live, lbn, cur);
      disk.dirty.delete(lbn);
      return true;
    } finally {
      release();
    }
  });
}

/**
 * One pass of the sealer: blocks not written for SEAL_AFTER_MS. `all` (a clean close): every block written
 * in place since the store was opened, for CLOSE_SEAL_MS at most; blocks queued at open (time 0: an older
 * store's, a crash's) are left to the sealer of a later mount or a scrub, so a close never reads the store.
 */
export async function sealDue(ctx: Context, all = false, yieldToWriters = false): Promise<number> {
  if (!ctx.integrity.enabled) return 0;
  const now = Date.now();
  const began = ctx.writes;
  const due = now - SEAL_AFTER_MS;
  let n = 0;
  for (const disk of [...ctx.disks.values()]) {
    for (const [lbn, t] of [...disk.dirty]) {
      if (all ? t === 0 || Date.now() - now > CLOSE_SEAL_MS : t > due || n >= SEAL_BATCH) continue;
      if (ctx.disks.get(disk.rec.name) !== disk || ctx.failure) return n;
      if (yieldToWriters && ctx.writes !== began) return n; // a writer came: the next pass goes on
      try {
        if (await sealLive(ctx, disk, lbn, t)) n++;
      } catch (e) {
        log.warn({ err: e, disk: disk.rec.name, lbn }, 'sealing a block failed; it stays unverified');
        disk.dirty.delete(lbn);
      }
    }
  }
  return n;
}

/** A pass of the background sealer waits while the store was written this recently (ms)... */
const SEAL_QUIET_MS = 1000;
/** ...but no more passes than this in a row (with the default SEAL_AFTER_MS, a pass a minute at least). */
const SEAL_YIELDS = 5;

/**
 * Run the sealer in the background until ctx.stop() (returns the stop function). It yields to writers: a
 * pass is put off while the store takes writes (SEAL_QUIET_MS), SEAL_YIELDS times at most, since a pass
 * reads blocks that a long overwrite is about to overwrite anyway (an overwrite of 2 GiB ran at 0.88× of the
 * same without checksums with the sealer at work, 1.0× without it).
 */
export function startSealer(ctx: Context): () => void {
  let running = false;
  let yielded = 0;
  const timer = setInterval(() => {
    if (running || ctx.failure) return;
    const forced = yielded >= SEAL_YIELDS;
    if (!forced && ctx.sinceWrite() < SEAL_QUIET_MS) {
      yielded++;
      return;
    }
    running = true;
    const began = ctx.writes;
    sealDue(ctx, false, !forced)
      .catch(() => undefined)
      .finally(() => {
        running = false;
        // a pass a writer cut short counts as one put off
        yielded = !forced && ctx.writes !== began ? yielded + 1 : 0;
      });
  }, Math.max(50, Math.floor(SEAL_AFTER_MS / 3)));
  timer.unref();
  return () => clearInterval(timer);
}

/** A damaged block: where it is, by disk, snapshot and offset. */
export interface DamagedBlock {
  view: string;
  lbn: number;
  offset: number;
  pbn: number;
  /** The first damaged sector's byte in the block. */
  sector: number;
}

export interface ScrubReport {
  /** Blocks read and checked against trusted checksums. */
  verified: number;
  /** Blocks without trusted checksums (unverified, or written since the last fsync before a crash). */
  unverified: number;
  /** Unverified blocks that got checksums (scrub only). */
  sealed: number;
  damaged: DamagedBlock[];
  bytes: number;
}

export interface ScrubOptions {
  /** Give unverified blocks checksums (online scrub); false: only look (check). */
  seal: boolean;
  /** Bytes per second at most (0: unthrottled). */
  rate?: number;
  /** Called after each block with the report so far. */
  progress?: (r: ScrubReport, done: number, total: number) => void;
  /** Stop early when this returns true. */
  stopped?: () => boolean;
}

/** The tables of a disk with the view each belongs to: the live table, then each snapshot's. */
function tablesOf(disk: DiskState): [Table, string][] {
  return [[disk.live, disk.rec.name], ...disk.rec.snapshots.map((s): [Table, string] => [disk.snapTable(s.id), `${disk.rec.name}@${s.name}`])];
}

/** Count the data entries of `disks` (the scrub's total, for progress). */
export async function countBlocks(disks: DiskState[]): Promise<number> {
  let n = 0;
  for (const d of disks) for (const [t] of tablesOf(d)) for await (const run of t.runs()) n += run.filter(([, e]) => e.kind === 'data').length;
  return n;
}

/** Read and verify every block the tables of `disks` reference; see ScrubOptions. */
export async function scrubDisks(ctx: Context, disks: DiskState[], opts: ScrubOptions): Promise<ScrubReport> {
  const r: ScrubReport = { verified: 0, unverified: 0, sealed: 0, damaged: [], bytes: 0 };
  const integ = ctx.integrity;
  const total = opts.progress ? await countBlocks(disks) : 0;
  const started = Date.now();
  let done = 0;
  for (const disk of disks) {
    const bs = disk.blockSize;
    const store = await ctx.pool.store(bs);
    // Two readers taking turns: the next group is read while this one is checked.
    const readers = [await groupReader(store, bs), await groupReader(store, bs)];
    for (const [table, view] of tablesOf(disk)) {
      for await (const run of table.runs(256)) {
        const data = run.filter((x): x is [number, DataEntry] => x[1].kind === 'data');
        // Up to SCRUB_GROUP blocks at a time, read as runs of adjacent blocks, then each checked in order.
        const groupAt = (i: number): Promise<Buffer[]> => readers[(i / SCRUB_GROUP) % 2]!(data.slice(i, i + SCRUB_GROUP).map(([, e]) => e.pbn));
        let next: Promise<Buffer[]> | undefined = data.length ? groupAt(0) : undefined;
        next?.catch(() => undefined);
        for (let i = 0; i < data.length; i += SCRUB_GROUP) {
          const blocks = await next!;
          next = i + SCRUB_GROUP < data.length ? groupAt(i + SCRUB_GROUP) : undefined;
          next?.catch(() => undefined); // awaited next turn; never an unhandled rejection if this turn throws
          if (opts.stopped?.()) {
            await next?.catch(() => undefined);
            return r;
          }
          const group = data.slice(i, i + SCRUB_GROUP);
          for (let j = 0; j < group.length; j++) {
            const [lbn, e] = group[j]!;
            const block = blocks[j]!;
            r.bytes += bs;
            done++;
            if (e.sums !== undefined && integ.trusted(e)) {
              r.verified++;
              const bad = mismatch(e.sums, block, 0) >= 0 ? await confirm(ctx, disk, table, lbn, e, block) : -1;
              if (bad >= 0) {
                const d: DamagedBlock = { view, lbn, offset: lbn * bs, pbn: e.pbn, sector: bad * 4096 };
                r.damaged.push(d);
                integ.damaged(`${view}, block ${lbn} (byte ${d.offset}), sector at byte ${d.sector} of its block (pool block ${e.pbn})`);
              }
            } else {
              r.unverified++;
              if (opts.seal) r.sealed += (await sealEntry(ctx, disk, table, lbn, e)) ? 1 : 0;
            }
            opts.progress?.(r, done, total);
          }
          if (opts.rate) {
            const ahead = (r.bytes / opts.rate) * 1000 - (Date.now() - started);
            if (ahead > 5) await new Promise((res) => setTimeout(res, ahead));
          }
        }
      }
    }
  }
  return r;
}

/**
 * A mismatch seen by the walk, confirmed: the entry is still the table's (the walk reads without locks, and
 * a block freed meanwhile may hold other data now) and a second read, under the block's lock for a live
 * block, does not match either. The damaged sector, or -1.
 */
async function confirm(ctx: Context, disk: DiskState, table: Table, lbn: number, e: DataEntry, block: Buffer): Promise<number> {
  const again = async (): Promise<number> => {
    const cur = await table.get(lbn);
    if (cur?.kind !== 'data' || cur.pbn !== e.pbn || cur.sums !== e.sums) return -1;
    await (await ctx.pool.store(disk.blockSize)).read(cur.pbn, block, 0);
    return mismatch(e.sums!, block, 0);
  };
  if (table !== disk.live) return again();
  const release = await disk.lock.acquire(lbn);
  try {
    return await again();
  } finally {
    release();
  }
}

/**
 * Give an unverified entry checksums from its block as it is now. A snapshot's blocks never change; a live
 * block is sealed under its lock (it may have changed since the walk read it).
 */
async function sealEntry(ctx: Context, disk: DiskState, table: Table, lbn: number, e: DataEntry): Promise<boolean> {
  if (table === disk.live) return sealLive(ctx, disk, lbn, undefined);
  return disk.changing(false, async () => {
    const cur = await table.get(lbn);
    if (cur?.kind !== 'data' || cur.pbn !== e.pbn || !ctx.integrity.needsSeal(cur)) return false;
    await reseal(ctx, disk, table, lbn, cur);
    return true;
  });
}

/** A scrub in the background (Registry.startScrub): its progress for status, and its result. */
export class ScrubJob {
  readonly started = new Date().toISOString();
  done: Promise<void> = Promise.resolve();
  blocks = 0;
  total = 0;
  report: ScrubReport = { verified: 0, unverified: 0, sealed: 0, damaged: [], bytes: 0 };
  finished: string | null = null;
  error: string | null = null;
  stopping = false;
  constructor(readonly what: string) {}

  update(r: ScrubReport, done: number, total: number): void {
    this.report = r;
    this.blocks = done;
    this.total = total;
  }

  stop(): void {
    this.stopping = true;
  }

  finish(r: ScrubReport | null, e: unknown): void {
    if (r) this.report = r;
    if (e) this.error = e instanceof Error ? e.message : String(e);
    this.finished = new Date().toISOString();
  }

  /** One line: what was read, sealed and found. */
  summary(): string {
    const r = this.report;
    const state = this.error ? `failed: ${this.error}` : this.stopping && this.blocks < this.total ? 'stopped' : this.finished ? 'done' : 'running';
    const dmg = r.damaged.length ? `${r.damaged.length} damaged: ${r.damaged.slice(0, 10).map((d) => `${d.view} byte ${d.offset}`).join(', ')}${r.damaged.length > 10 ? ', …' : ''}` : '0 damaged';
    return `scrub of ${this.what} ${state}: ${this.blocks} of ${this.total} blocks read (${r.verified} verified, ${r.sealed} sealed), ${dmg}`;
  }
}

/** A source of a disk's content for repair: fill dst with the bytes at `offset`; false when it has none there. */
export type RepairSource = (offset: number, dst: Buffer) => Promise<boolean>;

export interface RepairReport {
  /** Damaged blocks found (every view of the disk). */
  damaged: DamagedBlock[];
  /** Those rewritten from a source whose bytes match the block's checksums exactly. */
  repaired: DamagedBlock[];
}

/**
 * Repair the damaged blocks of `disk` (its live view and its snapshots) from `sources` (an image, a
 * standby's disk file, …): a block is rewritten in place only with bytes whose checksums equal the ones its
 * entry has, so a source can only ever put back exactly what was there; any other block stays damaged.
 * The caller makes the rewrites durable (a flush).
 */
export async function repairDisk(ctx: Context, disk: DiskState, sources: RepairSource[]): Promise<RepairReport> {
  const out: RepairReport = { damaged: [], repaired: [] };
  const bs = disk.blockSize;
  const store = await ctx.pool.store(bs);
  const block = Buffer.allocUnsafe(bs);
  const cand = Buffer.allocUnsafe(bs);
  for (const [table, view] of tablesOf(disk)) {
    for await (const run of table.runs(256)) {
      for (const [lbn, e] of run) {
        if (e.kind !== 'data' || e.sums === undefined || !ctx.integrity.trusted(e)) continue;
        const sums = e.sums;
        await store.read(e.pbn, block, 0);
        if (mismatch(sums, block, 0) < 0) continue;
        const fix = async (): Promise<boolean> => {
          const cur = await table.get(lbn);
          if (cur?.kind !== 'data' || cur.pbn !== e.pbn || cur.sums !== e.sums) return false; // changed meanwhile
          await store.read(e.pbn, block, 0);
          const bad = mismatch(sums, block, 0);
          if (bad < 0) return false;
          out.damaged.push({ view, lbn, offset: lbn * bs, pbn: e.pbn, sector: bad * 4096 });
          for (const src of sources) {
            if (!(await src(lbn * bs, cand).catch(() => false)) || mismatch(sums, cand, 0) >= 0) continue;
            await store.write(e.pbn, cand, 0);
            await store.read(e.pbn, block, 0);
            if (mismatch(sums, block, 0) >= 0) return false; // the device keeps it damaged
            out.repaired.push(out.damaged[out.damaged.length - 1]!);
            return true;
          }
          return false;
        };
        await disk.changing(false, async () => {
          const release = await disk.lock.acquire(lbn);
          try {
            await fix();
          } finally {
            release();
          }
        });
      }
    }
  }
  return out;
}
