// The allocation table's entry cache and reads (meta/table.ts): how much a miss reads, and that the entries
// a lookup returns are LevelDB's whatever the cache keeps.
import { afterAll, describe, expect, it } from 'vitest';
import { openLevel } from '../../src/meta/db.js';
import { EntryCache, Table, entryCost } from '../../src/meta/table.js';
import { encodeEntry, livePrefix, tableKey, type Entry } from '../../src/meta/keys.js';
import { cleanupDirs, prng, tempDir } from './helpers.js';

afterAll(cleanupDirs);

const data = (pbn: number): Entry => ({ kind: 'data', pbn, epoch: 1 });

async function tableOf(n: number, cacheBytes: number) {
  const db = await openLevel(await tempDir());
  const prefix = livePrefix(7);
  await db.batch(Array.from({ length: n }, (_, lbn) => ({ type: 'put' as const, key: tableKey(prefix, lbn), value: encodeEntry(data(lbn * 3 + 1), true) })));
  const cache = new EntryCache(cacheBytes);
  return { db, cache, prefix, table: new Table(db, cache, prefix, true) };
}

describe('table entries', () => {
  it('a random miss reads a short run of entries, a miss that continues a sequential access a long one', async () => {
    const { db, cache, prefix, table } = await tableOf(2000, 1 << 24);
    try {
      expect(await table.get(500)).toMatchObject({ pbn: 1501 });
      const cached = (lbn: number) => cache.has(tableKey(prefix, lbn));
      expect(cached(515)).toBe(true); // the block and the 15 after it
      expect(cached(516)).toBe(false);
      for (let lbn = 501; lbn <= 515; lbn++) expect(await table.get(lbn)).toMatchObject({ pbn: lbn * 3 + 1 });
      expect(await table.get(516)).toMatchObject({ pbn: 1549 }); // the next miss in order: 256 of them
      expect(cached(516 + 255)).toBe(true);
      expect(cache.size.entries).toBeLessThanOrEqual(16 + 256 + 256); // with at most one run read ahead
    } finally {
      await db.close();
    }
  });

  it('a random reader over more entries than the cache holds reads every entry right', async () => {
    const n = 3000;
    const { db, cache, table } = await tableOf(n, 500 * entryCost(data(0)));
    try {
      const rnd = prng(11);
      for (let i = 0; i < 4000; i++) {
        const lbn = Math.floor(rnd() * (n + 100)); // some past the last entry: no entry
        const e = await table.get(lbn);
        if (lbn < n) expect(e).toMatchObject({ kind: 'data', pbn: lbn * 3 + 1 });
        else expect(e).toBeUndefined();
      }
      expect(cache.size.bytes).toBeLessThanOrEqual(500 * entryCost(data(0)));
      expect(cache.size.entries).toBeGreaterThan(400);
    } finally {
      await db.close();
    }
  });
});
