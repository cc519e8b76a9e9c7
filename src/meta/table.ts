/**
 * Access to one allocation table (a disk's live table or a snapshot's preserved table) through a shared
 * LRU cache of entries, bounded by the memory its entries take (EntryCache). A miss reads a run of entries
 * with one iterator: PREFETCH of them where the miss continues a sequential access, so sequential I/O costs
 * one LevelDB seek per PREFETCH blocks, and RANDOM_RUN where it does not (a random reader wants one entry;
 * reading and caching 256 for each of its misses made a working set just larger than the cache ten times
 * slower: README, *Performance*). Negative results (no entry) are cached too.
 * Consistency: callers hold the block's lock while they read and update its entry. A change that is queued
 * for commit but not yet in LevelDB is kept in `pending` (never evicted) and wins over the cache and the
 * database; when its batch commits it moves to the cache. A prefetch racing with a change on another
 * block of the same table discards its neighbours (generation check).
 * Sequential access reads ahead: when the blocks a reader or writer touches follow one another, the run
 * AHEAD blocks further is fetched in the background before they get there, so a sequential stream finds
 * every entry in memory (without it, a 1 MiB writer of 64 KiB blocks took the slow path every 16 MiB, for
 * ~4 ms each). A background fetch never sets an entry that changed while it read, its own included.
 */
import { totalmem } from 'node:os';
import type { Db } from './db.js';
import { decodeEntry, encodeEntry, lbnOfKey, prefixEnd, tableKey, type Entry } from './keys.js';

const PREFETCH = 256;
/** Entries a miss that does not continue a sequential access reads (its block and the next ones). */
const RANDOM_RUN = 16;
/** How far ahead of a sequential access the next run is fetched (checked every AHEAD_STEP blocks). */
const AHEAD = PREFETCH / 2;
const AHEAD_STEP = 64;

/**
 * What an entry takes in V8's heap (bytes): its key string, the map's slot, the entry object and its
 * checksums' string. Measured with 500,000 entries decoded as LevelDB gives them: 93 bytes with no entry,
 * 142 for an entry without checksums, 181-310 for blocks of 4-64 KiB (8-88 characters of checksums), 1,590
 * for 1 MiB blocks.
 */
export const entryCost = (v: Entry | null): number => (v === null ? 96 : v.kind === 'data' && v.sums !== undefined ? 200 + v.sums.length : 144);

/**
 * The cache's default budget: 128 MiB, at most 1/16 of the machine's memory. That holds the entries of
 * ~28 GiB of 64 KiB blocks, or ~4.8 GiB of 8 KiB blocks, read or written at random.
 */
export const DEFAULT_TABLE_CACHE = Math.min(128 * 1024 * 1024, Math.floor(totalmem() / 16));

export class EntryCache {
  private map = new Map<string, Entry | null>();
  private used = 0;
  /** Lookups of the tables (Table.get and peek) since the cache was made, and how many it answered. */
  private lookups = 0;
  private found = 0;
  /** At most maxBytes of entries (entryCost). */
  constructor(readonly maxBytes = DEFAULT_TABLE_CACHE) {}

  /** Entries held, the bytes they take, and the tables' lookups it answered (status shows them). */
  get size(): { entries: number; bytes: number; maxBytes: number; lookups: number; found: number } {
    return { entries: this.map.size, bytes: this.used, maxBytes: this.maxBytes, lookups: this.lookups, found: this.found };
  }

  /** get() for a table lookup: counted in size's lookups and found. */
  lookup(key: string): Entry | null | undefined {
    const v = this.get(key);
    this.lookups++;
    if (v !== undefined) this.found++;
    return v;
  }

  /** Whether key is cached, without making it recent. */
  has(key: string): boolean {
    return this.map.has(key);
  }

  get(key: string): Entry | null | undefined {
    const v = this.map.get(key);
    if (v !== undefined) {
      this.map.delete(key);
      this.map.set(key, v);
    }
    return v;
  }

  set(key: string, v: Entry | null): void {
    this.delete(key);
    this.map.set(key, v);
    this.used += entryCost(v);
    while (this.used > this.maxBytes) {
      const first = this.map.keys().next();
      if (first.done) break;
      this.delete(first.value);
    }
  }

  delete(key: string): void {
    const old = this.map.get(key);
    if (old === undefined) return;
    this.map.delete(key);
    this.used -= entryCost(old);
  }

  clearPrefix(prefix: string): void {
    for (const k of [...this.map.keys()]) if (k.startsWith(prefix)) this.delete(k);
  }
}

export type BatchOp = { type: 'put'; key: string; value: string } | { type: 'del'; key: string };

export class Table {
  private gen = 0;
  private pending = new Map<number, Entry | null>();
  /** Recently changed blocks (lbn -> generation of the change), so a prefetch can skip just those. */
  private changed = new Map<number, number>();
  /** Changes older than this generation may have been dropped from `changed`. */
  private changedFloor = 0;
  /** The block last found in memory (sequential access detection). */
  private last = -2;
  /** The block of the last get(), hit or miss. A miss at the block after it or after `last` continues a sequential access. */
  private lastGet = -2;

  private touch(lbn: number): void {
    this.gen++;
    this.changed.set(lbn, this.gen);
    if (this.changed.size > 4096) {
      this.changed.clear();
      this.changedFloor = this.gen;
    }
  }
  constructor(
    private db: Db,
    private cache: EntryCache,
    readonly prefix: string,
    /** Live tables store the write epoch with each entry; snapshot tables do not. */
    private withEpoch: boolean,
  ) {}

  key(lbn: number): string {
    return tableKey(this.prefix, lbn);
  }

  /** Prefetches in flight: a get inside one waits for it instead of reading the same run again. */
  private fetching: { from: number; n: number; done: Promise<unknown> }[] = [];

  async get(lbn: number): Promise<Entry | undefined> {
    const seq = lbn === this.lastGet + 1 || lbn === this.last + 1;
    this.lastGet = lbn;
    const p = this.pending.get(lbn);
    if (p !== undefined) return p ?? undefined;
    const k = this.key(lbn);
    const hit = this.cache.lookup(k);
    if (hit !== undefined) {
      this.found(lbn);
      return hit ?? undefined;
    }
    // A multi-block request misses on all its blocks at once; one LevelDB read serves them all.
    const running = this.fetchingAt(lbn);
    if (running) {
      await running.done;
      const again = this.pending.get(lbn) ?? this.cache.get(k);
      if (again !== undefined) return again ?? undefined;
    }
    return this.startFetch(lbn, k, true, seq ? PREFETCH : RANDOM_RUN);
  }

  /** The prefetch in flight whose run holds lbn, if any. */
  private fetchingAt(lbn: number): { from: number; done: Promise<unknown> } | undefined {
    return this.fetching.find((f) => lbn >= f.from && lbn < f.from + f.n);
  }

  /** fetch(), listed in `fetching` until it settles. */
  private startFetch(lbn: number, k: string, locked: boolean, n: number): Promise<Entry | undefined> {
    const fetch = { from: lbn, n, done: this.fetch(lbn, k, locked, n) };
    this.fetching.push(fetch);
    const settled = (): void => void this.fetching.splice(this.fetching.indexOf(fetch), 1);
    fetch.done.then(settled, settled);
    return fetch.done;
  }

  /**
   * A hit on lbn: when it follows the previous hit, every AHEAD_STEP blocks, fetch the run AHEAD blocks on
   * in the background unless it is known or on its way. Its failure is dropped: the get() that needs the
   * entry reads it again and reports it.
   */
  private found(lbn: number): void {
    const prev = this.last;
    this.last = lbn;
    if (lbn !== prev + 1 || lbn % AHEAD_STEP !== 0) return;
    const next = lbn + AHEAD;
    const k = this.key(next);
    if (this.pending.has(next) || this.cache.has(k) || this.fetchingAt(next)) return;
    void this.startFetch(next, k, false, PREFETCH);
  }

  /**
   * Read the run of n entries from lbn into the cache. `locked`: the caller holds lbn's lock, so lbn's
   * own entry cannot change meanwhile and is set whatever happened to its neighbours; a background fetch
   * (found) treats lbn as a neighbour.
   */
  private async fetch(lbn: number, k: string, locked: boolean, n: number): Promise<Entry | undefined> {
    const gen = this.gen;
    const found = new Map<number, Entry>();
    const it = this.db.iterator({ gte: k, lt: this.key(lbn + n) });
    try {
      // nextv may return fewer entries than asked for (LevelDB's iterator caps a read by bytes): read until
      // the range is exhausted, or what is missing would be cached as holes.
      for (;;) {
        const got = await it.nextv(n);
        if (got.length === 0) break;
        for (const [key, value] of got) found.set(lbnOfKey(key), decodeEntry(value));
      }
    } finally {
      await it.close();
    }
    if (gen >= this.changedFloor) {
      for (let i = locked ? 1 : 0; i < n; i++) {
        const g = this.changed.get(lbn + i);
        if (g !== undefined && g > gen) continue; // changed while we read: our copy may be stale
        const nk = this.key(lbn + i);
        if (this.cache.get(nk) === undefined) this.cache.set(nk, found.get(lbn + i) ?? null);
      }
    }
    const mine = found.get(lbn) ?? null;
    if (locked) this.cache.set(k, mine);
    return mine ?? undefined;
  }

  /**
   * The entry if it is known without reading LevelDB: an Entry, null (known: no entry), or undefined
   * (not in memory; use get()).
   */
  peek(lbn: number): Entry | null | undefined {
    const p = this.pending.get(lbn);
    if (p !== undefined) return p;
    const k = this.key(lbn);
    const hit = this.cache.lookup(k);
    if (hit !== undefined) this.found(lbn);
    // A sequential reader served from memory has come to the end of what a short run read: the run from
    // here on is fetched in the background (the caller's get() meanwhile waits for it), as found() does.
    else if (lbn === this.last + 1 && !this.fetchingAt(lbn)) void this.startFetch(lbn, k, false, PREFETCH);
    return hit;
  }

  putOp(lbn: number, e: Entry): BatchOp {
    return { type: 'put', key: this.key(lbn), value: encodeEntry(e, this.withEpoch) };
  }

  delOp(lbn: number): BatchOp {
    return { type: 'del', key: this.key(lbn) };
  }

  /** A change queued for commit: visible to get() from now on. */
  staged(lbn: number, e: Entry | undefined): void {
    this.touch(lbn);
    this.pending.set(lbn, e ?? null);
  }

  /** Record a committed change in the cache (call after the batch succeeded). */
  committed(lbn: number, e: Entry | undefined): void {
    this.touch(lbn);
    const v = e ?? null;
    if (this.pending.get(lbn) === v) this.pending.delete(lbn);
    else if (this.pending.has(lbn)) return; // a newer staged change is still on its way
    this.cache.set(this.key(lbn), v);
  }

  /** Drop a staged change whose batch failed. */
  unstage(lbn: number, e: Entry | undefined): void {
    this.touch(lbn);
    if (this.pending.get(lbn) === (e ?? null)) this.pending.delete(lbn);
    this.cache.delete(this.key(lbn));
  }

  /** get() without a wait when the entry is in memory (walks that look up many entries of a table). */
  lookup(lbn: number): Entry | undefined | Promise<Entry | undefined> {
    const p = this.peek(lbn);
    return p === undefined ? this.get(lbn) : (p ?? undefined);
  }

  /** Entries in ascending lbn order, in arrays of up to `n` (one LevelDB read each), for walks that do little per entry. */
  async *runs(n = 1024): AsyncGenerator<[number, Entry][]> {
    const it = this.db.iterator({ gte: this.key(0), lt: prefixEnd(this.prefix) });
    try {
      for (;;) {
        const got = await it.nextv(n);
        if (got.length === 0) return;
        yield got.map(([key, value]): [number, Entry] => [lbnOfKey(key), decodeEntry(value)]);
      }
    } finally {
      await it.close();
    }
  }

  /** Entries in ascending lbn order, optionally from `fromLbn`. */
  async *entries(fromLbn = 0): AsyncGenerator<[number, Entry]> {
    for await (const [key, value] of this.db.iterator({ gte: this.key(fromLbn), lt: prefixEnd(this.prefix) })) {
      yield [lbnOfKey(key), decodeEntry(value)];
    }
  }

  /**
   * Entries in ascending lbn order from `fromLbn` as get() sees them: LevelDB's (one iterator, its own
   * consistent snapshot) with the staged changes that are not in LevelDB yet laid over them (a staged
   * removal hides the LevelDB entry). The cache holds only committed state, which LevelDB has too, so it
   * is not consulted. The staged changes are those of the moment of the call; a change staged while the
   * caller iterates may or may not be seen (as with any reader racing a writer).
   */
  async *current(fromLbn = 0): AsyncGenerator<[number, Entry]> {
    const staged = [...this.pending].filter(([lbn]) => lbn >= fromLbn).sort((x, y) => x[0] - y[0]);
    let i = 0;
    for await (const [lbn, e] of this.entries(fromLbn)) {
      let replaced = false;
      while (i < staged.length && staged[i]![0] <= lbn) {
        const [slbn, se] = staged[i++]!;
        if (se) yield [slbn, se];
        if (slbn === lbn) replaced = true;
      }
      if (!replaced) yield [lbn, e];
    }
    for (; i < staged.length; i++) {
      const [slbn, se] = staged[i]!;
      if (se) yield [slbn, se];
    }
  }

  forget(): void {
    this.gen++;
    this.changed.clear();
    this.changedFloor = this.gen;
    this.pending.clear();
    this.cache.clearPrefix(this.prefix);
  }
}
