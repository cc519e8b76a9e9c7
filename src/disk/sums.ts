/**
 * Block checksums: the one statement of the rule. Every data entry may carry the CRC-32 of each 4 KiB sector
 * of its block (`sums`, meta/keys.ts) and the generation they were written in (`gen`). They are computed
 * where whole sectors pass through the daemon (a new block, a merge, a restore, a seal), travel with the
 * entry (copy-on-write moves it into a snapshot's table, a rollback moves it back, a clone reads through
 * to it: shared blocks share checksums) and commit atomically with it.
 *
 * When a checksum is trusted. A table entry is written after its data (a new block: the batch waits for
 * the pool write) or after the data was read back (a seal), so after a process crash the two agree. After
 * a power cut a batch may survive whose data did not (both unsynced): that entry must not turn its lost data
 * into an error, since the durability contract lets data written since the last fsync read as old content or
 * zeros. So checksums are trusted only from the fsync that made their data and their entry durable on:
 * generations number the intervals between fsyncs (session × 2^32 + n; a session is one open of the
 * store), `settled` is the newest generation an fsync completed, and the generations a crashed session
 * had not settled stay untrusted for good (meta!gen `unsettled`). A mismatch of a trusted checksum is EIO
 * to the reader (never the bytes), a log line and a count in status; an untrusted one reads as is.
 *
 * Writes in place. A block the live disk owns is overwritten in place, and data and entry cannot change
 * in one step; so such a write drops the block's checksums (dirty) in the next batch, and a crash between the
 * two must not leave a trusted checksum of the old content over new bytes. Write intents cover that: before
 * the first write in place into a block with trusted checksums in a *region* (INTENT_REGION pool blocks),
 * the session records the region in meta!gen with a synced batch that the pool write waits for (write-behind
 * holds it: the writer's answer does not wait); later such writes in that region wait for nothing. A session
 * that did not close cleanly leaves its intents *demoted* at the next open: checksums in those regions from
 * before that open are not trusted (they read unverified and are sealed again). So a database or a long
 * overwrite pays one synced batch per region per session, not one per block. The block is unverified until
 * sealed again: the sealer reads
 * blocks nobody has written for SEAL_AFTER_MS, computes their checksums and commits them (a generation
 * that settles at the next fsync). Later writes to a dirty block cost nothing extra, so a database's hot
 * blocks take the same path as before checksums. `scrub` seals every unverified block it meets.
 */
import { crc32, crc32Each, crc32OfPieces } from '../util/crc32.js';
import type { DataEntry } from '../meta/keys.js';
import type { Context } from './context.js';
import { GEN_KEY } from '../meta/keys.js';
import { corrupt } from '../errors.js';
import { logger } from '../log.js';

const log = logger('sums');

export const SECTOR = 4096;
const SESSION = 2 ** 32;
/** Pool blocks per write-intent region (with 64 KiB blocks, 256 MiB). */
export const INTENT_REGION = 4096;

/** Checksums of a whole block. */
export function sumsOf(block: Buffer): string {
  return sumsFrom(crc32Each(block, SECTOR));
}

/** A block's checksums from its sectors' CRC-32s (computed by whoever read the block: a restore's parser). */
export function sumsFrom(sectorCrcs: Uint32Array): string {
  const out = Buffer.allocUnsafe(sectorCrcs.length * 4);
  for (let i = 0; i < sectorCrcs.length; i++) out.writeUInt32LE(sectorCrcs[i]!, i * 4);
  return out.toString('base64');
}

/**
 * `sums` with the sectors `data` (written at offsetInBlock) covers replaced; undefined when `data` does not
 * cover whole sectors (their other bytes are not known here) or there are no sums to start from.
 */
export function spliceSums(sums: string | undefined, offsetInBlock: number, data: Buffer): string | undefined {
  if (sums === undefined || offsetInBlock % SECTOR !== 0 || data.length % SECTOR !== 0) return undefined;
  const out = Buffer.from(sums, 'base64');
  const first = offsetInBlock / SECTOR;
  for (let i = 0; i < data.length / SECTOR; i++) out.writeUInt32LE(crc32(data.subarray(i * SECTOR, (i + 1) * SECTOR)), (first + i) * 4);
  return out.toString('base64');
}

/** The checksums of a whole new block, when checksums are on (from its sectors' CRC-32s when given). */
export function sumsIfOn(ctx: Context, block: Buffer, sectorCrcs?: Uint32Array): string | undefined {
  if (!ctx.integrity.enabled) return undefined;
  return sectorCrcs && sectorCrcs.length * SECTOR === block.length ? sumsFrom(sectorCrcs) : sumsOf(block);
}

/** A data entry for a new block, with its checksums (stamped with the current generation) when it has them. */
export function sealedEntry(ctx: Context, pbn: number, epoch: number, sums: string | undefined): DataEntry {
  return sums === undefined ? { kind: 'data', pbn, epoch } : { kind: 'data', pbn, epoch, sums, gen: ctx.integrity.stamp() };
}

/** The sector-aligned range covering [offsetInBlock, offsetInBlock + length) of a block of `bs` bytes. */
export function covering(offsetInBlock: number, length: number, bs: number): { start: number; end: number } {
  const start = Math.floor(offsetInBlock / SECTOR) * SECTOR;
  const end = Math.min(bs, Math.ceil((offsetInBlock + length) / SECTOR) * SECTOR);
  return { start, end };
}

/** What meta!gen holds. */
export interface GenRecord {
  session: number;
  settled: number;
  unsettled: [number, number][];
  /** Set by a clean close: every generation of `session` is settled. */
  closed?: boolean;
  /** [first, last] ranges of the write-intent regions of `session` (writes in place, above). */
  intents?: [number, number][];
  /**
   * [first, last, bound] ranges of regions a session that did not close cleanly had intents for: checksums
   * in them of a generation below `bound` (the first of the session that found them) are not trusted.
   */
  demoted?: [number, number, number][];
}

/** Sorted [first, last] ranges of a set of numbers. */
function ranges(ns: Iterable<number>): [number, number][] {
  const out: [number, number][] = [];
  for (const n of [...ns].sort((a, b) => a - b)) {
    const last = out[out.length - 1];
    if (last && n <= last[1] + 1) last[1] = Math.max(last[1], n);
    else out.push([n, n]);
  }
  return out;
}

/** Demoted ranges with more added: overlapping or adjacent ones merge, keeping the higher bound (trusting less). */
function mergeDemoted(list: [number, number, number][]): [number, number, number][] {
  const out: [number, number, number][] = [];
  for (const [a, b, g] of [...list].sort((x, y) => x[0] - y[0])) {
    const last = out[out.length - 1];
    if (last && a <= last[1] + 1) {
      last[1] = Math.max(last[1], b);
      last[2] = Math.max(last[2], g);
    } else out.push([a, b, g]);
  }
  return out;
}

/** A damaged block found by a read, a backup, check or scrub. */
export interface Damage {
  where: string;
  time: string;
}

export class Integrity {
  /** Checksums are computed and verified (VDISKFS_CHECKSUMS=off turns both off, for the bench's comparison). */
  readonly enabled = process.env.VDISKFS_CHECKSUMS !== 'off';
  session = 0;
  /** The generation new checksums are written in. */
  gen = 1;
  settled = 0;
  unsettled: [number, number][] = [];
  /** A checksum of the current generation has been staged since it began: the next fsync settles it. */
  used = false;
  /** Trusted checksums that did not match, since the store was opened. */
  errors = 0;
  /** Untrusted checksums that did not match (data written before a crash, not fsync'd). */
  unsettledMismatches = 0;
  readonly recent: Damage[] = [];
  /** Write-intent regions of this session: true once durable, else the batch that makes them so. */
  private readonly intents = new Map<number, true | Promise<void>>();
  /** See GenRecord.demoted. */
  demoted: [number, number, number][] = [];

  /** Load meta!gen (undefined: a store without checksums yet) and start a new session after it. */
  load(rec: GenRecord | undefined): void {
    const prev = rec ?? { session: 0, settled: 0, unsettled: [], closed: true };
    this.unsettled = [...prev.unsettled];
    // Generations the previous session used past its last fsync are never trusted (a crash may have kept
    // their entries but not their data); a clean close settled all of them.
    if (!prev.closed && prev.settled < (prev.session + 1) * SESSION - 1) this.unsettled.push([prev.settled + 1, (prev.session + 1) * SESSION - 1]);
    this.session = prev.session + 1;
    this.settled = prev.settled;
    this.gen = this.session * SESSION + 1;
    // Its writes in place may have reached the pool without the entries that dropped their checksums.
    const lost = prev.closed ? [] : (prev.intents ?? []).map(([a, b]): [number, number, number] => [a, b, this.session * SESSION]);
    this.demoted = mergeDemoted([...(prev.demoted ?? []), ...lost]);
  }

  record(closed: boolean): GenRecord {
    return {
      session: this.session,
      settled: this.settled,
      unsettled: this.unsettled,
      ...(closed ? { closed: true } : {}),
      ...(this.intents.size ? { intents: ranges(this.intents.keys()) } : {}),
      ...(this.demoted.length ? { demoted: this.demoted } : {}),
    };
  }

  /** The generation for checksums staged now. */
  stamp(): number {
    this.used = true;
    return this.gen;
  }

  /**
   * A write in place into e's block needs its region's write intent durable first: e's checksums are trusted,
   * or an fsync under way may make them so (any generation before the current one). Those of the current
   * generation cannot be settled before a batch queued now (an fsync bumps the generation first, then
   * drains), and stale ones never will.
   */
  unsealDurably(e: DataEntry): boolean {
    return e.sums !== undefined && (e.gen ?? 0) < this.gen && !this.stale(e);
  }

  /** e's checksums are trusted: their generation settled, and no crash since may have left its block written in place under them. */
  trusted(e: DataEntry): boolean {
    return (e.gen ?? 0) <= this.settled && !this.stale(e);
  }

  /**
   * A crash may have left e's checksums describing other content than its block's: a generation it left
   * unsettled, or a region it had write intents for (demoted) and a generation from before that.
   */
  private stale(e: DataEntry): boolean {
    const gen = e.gen ?? 0;
    if (this.unsettled.some(([a, b]) => gen >= a && gen <= b)) return true;
    if (!this.demoted.length) return false;
    const r = Math.floor(e.pbn / INTENT_REGION);
    return this.demoted.some(([a, b, bound]) => r >= a && r <= b && gen < bound);
  }

  /** Every region of these pool blocks has a durable write intent this session. */
  intended(pbns: number[]): boolean {
    return pbns.every((pbn) => this.intents.get(Math.floor(pbn / INTENT_REGION)) === true);
  }

  /**
   * What writes in place into these pool blocks (trusted checksums: unsealDurably) wait for: the synced batch
   * that records their regions' intents, or nothing when every one is durable already.
   */
  intend(ctx: Context, pbns: number[]): Promise<void> | undefined {
    const waits = new Set<Promise<void>>();
    const fresh: number[] = [];
    for (const pbn of pbns) {
      const r = Math.floor(pbn / INTENT_REGION);
      const known = this.intents.get(r);
      if (known === true) continue;
      if (known) waits.add(known);
      else if (!fresh.includes(r)) fresh.push(r);
    }
    if (fresh.length) {
      let settle!: [() => void, (e: unknown) => void];
      const pending = new Promise<void>((resolve, reject) => (settle = [resolve, reject]));
      for (const r of fresh) this.intents.set(r, pending);
      // meta!gen as it is, with these regions (every later record carries them too: intents only grow)
      ctx.commit([{ type: 'put', key: GEN_KEY, value: JSON.stringify(this.record(false)) }], true, true, { barrier: true }).then(...settle);
      pending.then(
        () => {
          for (const r of fresh) this.intents.set(r, true);
        },
        () => {
          for (const r of fresh) if (this.intents.get(r) === pending) this.intents.delete(r);
        },
      );
      waits.add(pending);
    }
    if (!waits.size) return undefined;
    return waits.size === 1 ? [...waits][0]! : Promise.all(waits).then(() => undefined);
  }

  /**
   * e's checksums describe what its block holds, unless it is damaged: trusted, or written in this
   * session (no crash since: its data was written before it). Such checksums may be carried to a copy.
   */
  reliable(e: DataEntry): boolean {
    return e.sums !== undefined && (this.trusted(e) || (e.gen ?? 0) > this.session * SESSION);
  }

  /**
   * e gets checksums from its block as it is now when sealed: it has none, or only ones a crash left
   * untrusted for good (those of this session settle at the next fsync).
   */
  needsSeal(e: DataEntry): boolean {
    return this.enabled && !this.reliable(e);
  }

  /**
   * The first sector of `part` (bytes [offsetInBlock, +length) of e's block, sector-aligned: see covering)
   * whose trusted checksum does not match, or -1. A mismatch of an untrusted checksum is counted and is no
   * damage: the bytes are what the disk holds.
   */
  private damagedSector(e: DataEntry, part: Buffer, offsetInBlock: number, crc?: number): number {
    if (e.sums === undefined || !this.enabled) return -1;
    const bad = mismatch(e.sums, part, offsetInBlock, crc);
    if (bad < 0) return -1;
    if (this.trusted(e)) return bad;
    this.unsettledMismatches++;
    return -1;
  }

  /** verify() without throwing or recording: false when `part` is damaged (the caller takes a path that reports it). */
  probe(e: DataEntry, part: Buffer, offsetInBlock: number): boolean {
    return this.damagedSector(e, part, offsetInBlock) < 0;
  }

  /**
   * Check `part` against e's checksums (damagedSector). Damage throws CORRUPT (EIO) naming `where()` and is
   * recorded; nothing is returned to the reader. Computes no CRC when there is nothing to check.
   */
  verify(e: DataEntry, part: Buffer, offsetInBlock: number, where: () => string): void {
    this.check(e, part, offsetInBlock, where);
  }

  /**
   * verify(), returning crc32(part): computed once for both, so a caller that needs the CRC of what it read
   * (an image's checksum groups) does not read the bytes a second time.
   */
  verifyCrc(e: DataEntry, part: Buffer, offsetInBlock: number, where: () => string): number {
    const crc = crc32(part);
    this.check(e, part, offsetInBlock, where, crc);
    return crc;
  }

  private check(e: DataEntry, part: Buffer, offsetInBlock: number, where: () => string, crc?: number): void {
    const bad = this.damagedSector(e, part, offsetInBlock, crc);
    if (bad < 0) return;
    const at = `${where()}, sector at byte ${bad * SECTOR} of its block (pool block ${e.pbn})`;
    this.damaged(at);
    throw corrupt(`checksum mismatch: ${at}; the block is damaged and is not returned (vdiskfs scrub lists every such block)`);
  }

  /** Record a damaged block (a read, a backup, scrub). */
  damaged(where: string): void {
    this.errors++;
    this.recent.push({ where, time: new Date().toISOString() });
    if (this.recent.length > 20) this.recent.shift();
    log.error({ where }, 'checksum mismatch: damaged block');
  }
}

/**
 * The index of the first sector of `part` (at offsetInBlock, sector-aligned) whose CRC differs, or -1.
 * One crc32 call over the whole part, compared with the CRC its sectors' checksums combine to
 * (crc32OfPieces); only a part that fails is checked sector by sector, to name the sector. Damage within
 * one sector is caught exactly as by that sector's own checksum (the combination is a bijection of it);
 * damage in several sectors escapes only if the changes cancel, with the odds of a CRC-32 collision.
 * `crc`: crc32(part), when the caller has computed it.
 */
export function mismatch(sums: string, part: Buffer, offsetInBlock: number, crc?: number): number {
  const want = Buffer.from(sums, 'base64');
  const first = offsetInBlock / SECTOR;
  const n = part.length / SECTOR;
  if (Number.isInteger(n) && (first + n) * 4 <= want.length && crc32OfPieces(SECTOR, n, (i) => want.readUInt32LE((first + i) * 4)) === (crc ?? crc32(part))) return -1;
  for (let i = 0; i * SECTOR < part.length; i++) {
    const s = first + i;
    if ((s + 1) * 4 > want.length) return s;
    if (crc32(part.subarray(i * SECTOR, (i + 1) * SECTOR)) !== want.readUInt32LE(s * 4)) return s;
  }
  return -1;
}
