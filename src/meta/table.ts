/**
 * Access to one allocation table (a disk's live table or a snapshot's preserved table) through a shared
 * LRU cache of entries. A miss reads a run of PREFETCH entries with one iterator, so sequential I/O costs
 * one LevelDB seek per PREFETCH blocks. Negative results (no entry) are cached too.
 * Consistency: callers hold the block's lock while they read and update its entry; the cache is updated
 * only after the batch that changed an entry has committed. A prefetch racing with a commit on another
 * block of the same table discards its neighbours (generation check).
 */
import type { Db } from './db.js';
import { decodeEntry, encodeEntry, lbnOfKey, prefixEnd, type Entry } from './keys.js';

const PREFETCH = 64;

export class EntryCache {
  private map = new Map<string, Entry | null>();
  constructor(private limit = 200_000) {}

  get(key: string): Entry | null | undefined {
    const v = this.map.get(key);
    if (v !== undefined) {
      this.map.delete(key);
      this.map.set(key, v);
    }
    return v;
  }

  set(key: string, v: Entry | null): void {
    this.map.delete(key);
    this.map.set(key, v);
    if (this.map.size > this.limit) {
      const first = this.map.keys().next();
      if (!first.done) this.map.delete(first.value);
    }
  }

  delete(key: string): void {
    this.map.delete(key);
  }

  clearPrefix(prefix: string): void {
    for (const k of this.map.keys()) if (k.startsWith(prefix)) this.map.delete(k);
  }
}

export type BatchOp = { type: 'put'; key: string; value: string } | { type: 'del'; key: string };

export class Table {
  private gen = 0;
  constructor(
    private db: Db,
    private cache: EntryCache,
    readonly prefix: string,
    /** Live tables store the write epoch with each entry; snapshot tables do not. */
    private withEpoch: boolean,
  ) {}

  key(lbn: number): string {
    return this.prefix + lbn.toString(16).padStart(12, '0');
  }

  async get(lbn: number): Promise<Entry | undefined> {
    const k = this.key(lbn);
    const hit = this.cache.get(k);
    if (hit !== undefined) return hit ?? undefined;
    const gen = this.gen;
    const found = new Map<number, Entry>();
    for await (const [key, value] of this.db.iterator({ gte: k, lt: this.key(lbn + PREFETCH) })) {
      found.set(lbnOfKey(key), decodeEntry(value));
    }
    if (gen === this.gen) {
      for (let i = 1; i < PREFETCH; i++) {
        const nk = this.key(lbn + i);
        if (this.cache.get(nk) === undefined) this.cache.set(nk, found.get(lbn + i) ?? null);
      }
    }
    const mine = found.get(lbn) ?? null;
    this.cache.set(k, mine);
    return mine ?? undefined;
  }

  putOp(lbn: number, e: Entry): BatchOp {
    return { type: 'put', key: this.key(lbn), value: encodeEntry(e, this.withEpoch) };
  }

  delOp(lbn: number): BatchOp {
    return { type: 'del', key: this.key(lbn) };
  }

  /** Record a committed change in the cache (call after the batch succeeded). */
  committed(lbn: number, e: Entry | undefined): void {
    this.gen++;
    this.cache.set(this.key(lbn), e ?? null);
  }

  /** Entries in ascending lbn order, optionally from `fromLbn`. */
  async *entries(fromLbn = 0): AsyncGenerator<[number, Entry]> {
    for await (const [key, value] of this.db.iterator({ gte: this.key(fromLbn), lt: prefixEnd(this.prefix) })) {
      yield [lbnOfKey(key), decodeEntry(value)];
    }
  }

  forget(): void {
    this.gen++;
    this.cache.clearPrefix(this.prefix);
  }
}
