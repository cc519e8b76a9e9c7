/**
 * Access to one allocation table (a disk's live table or a snapshot's preserved table) through a shared
 * LRU cache of entries. A miss reads a run of PREFETCH entries with one iterator, so sequential I/O costs
 * one LevelDB seek per PREFETCH blocks. Negative results (no entry) are cached too.
 * Consistency: callers hold the block's lock while they read and update its entry. A change that is queued
 * for commit but not yet in LevelDB is kept in `pending` (never evicted) and wins over the cache and the
 * database; when its batch commits it moves to the cache. A prefetch racing with a change on another
 * block of the same table discards its neighbours (generation check).
 * Sequential access reads ahead: when the blocks a reader or writer touches follow one another, the run
 * AHEAD blocks further is fetched in the background before they get there, so a sequential stream finds
 * every entry in memory (without it, a 1 MiB writer of 64 KiB blocks took the slow path every 16 MiB, for
 * ~4 ms each). A background fetch never sets an entry that changed while it read, its own included.
 */
import type { Db } from './db.js';
import { decodeEntry, encodeEntry, lbnOfKey, prefixEnd, tableKey, type Entry } from './keys.js';

const PREFETCH = 256;
/** How far ahead of a sequential access the next run is fetched (checked every AHEAD_STEP blocks). */
const AHEAD = PREFETCH / 2;
const AHEAD_STEP = 64;

/** What an entry costs the cache, roughly (bytes): its key and object, and its checksums' string. */
const entryCost = (v: Entry | null): number => 96 + (v?.kind === 'data' ? (v.sums?.length ?? 0) : 0);

export class EntryCache {
  private map = new Map<string, Entry | null>();
  private bytes = 0;
  /**
   * At most `limit` entries and `maxBytes` (entries of 1 MiB blocks carry 1.4 KB of checksums each: by
   * count alone 100,000 of them would hold 140 MB).
   */
  constructor(
    private limit = 100_000,
    private maxBytes = 32 * 1024 * 1024,
  ) {}

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
    this.bytes += entryCost(v);
    while (this.map.size > this.limit || this.bytes > this.maxBytes) {
      const first = this.map.keys().next();
      if (first.done) break;
      this.delete(first.value);
    }
  }

  delete(key: string): void {
    const old = this.map.get(key);
    if (old === undefined) return;
    this.map.delete(key);
    this.bytes -= entryCost(old);
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
  private fetching: { from: number; done: Promise<unknown> }[] = [];

  async get(lbn: number): Promise<Entry | undefined> {
    const p = this.pending.get(lbn);
    if (p !== undefined) return p ?? undefined;
    const k = this.key(lbn);
    const hit = this.cache.get(k);
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
    return this.startFetch(lbn, k, true);
  }

  /** The prefetch in flight whose run holds lbn, if any. */
  private fetchingAt(lbn: number): { from: number; done: Promise<unknown> } | undefined {
    return this.fetching.find((f) => lbn >= f.from && lbn < f.from + PREFETCH);
  }

  /** fetch(), listed in `fetching` until it settles. */
  private startFetch(lbn: number, k: string, locked: boolean): Promise<Entry | undefined> {
    const fetch = { from: lbn, done: this.fetch(lbn, k, locked) };
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
    void this.startFetch(next, k, false);
  }

  /**
   * Read the run of PREFETCH entries from lbn into the cache. `locked`: the caller holds lbn's lock, so lbn's
   * own entry cannot change meanwhile and is set whatever happened to its neighbours; a background fetch
   * (found) treats lbn as a neighbour.
   */
  private async fetch(lbn: number, k: string, locked: boolean): Promise<Entry | undefined> {
    const gen = this.gen;
    const found = new Map<number, Entry>();
    const it = this.db.iterator({ gte: k, lt: this.key(lbn + PREFETCH) });
    try {
      // nextv may return fewer entries than asked for (LevelDB's iterator caps a read by bytes): read until
      // the range is exhausted, or what is missing would be cached as holes.
      for (;;) {
        const got = await it.nextv(PREFETCH);
        if (got.length === 0) break;
        for (const [key, value] of got) found.set(lbnOfKey(key), decodeEntry(value));
      }
    } finally {
      await it.close();
    }
    if (gen >= this.changedFloor) {
      for (let i = locked ? 1 : 0; i < PREFETCH; i++) {
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
    const hit = this.cache.get(this.key(lbn));
    if (hit !== undefined) this.found(lbn);
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
