// The LevelDB bottom (src/store/levelBlocks.ts): block values in the store's database, discards, the
// open-time sweep of unreferenced values, `check`, and the choice of bottom recorded in the format record.
import { afterAll, describe, expect, it } from 'vitest';
import { readdir } from 'node:fs/promises';
import { openDb, type Db } from '../../src/meta/db.js';
import { BLOCK_PREFIX, FORMAT_KEY, STORE_VERSION, STORE_VERSION_LEVELDB, blockKey, prefixEnd } from '../../src/meta/keys.js';
import { LevelBlockStore, sweepBlocks } from '../../src/store/levelBlocks.js';
import { Registry } from '../../src/disk/registry.js';
import { readView, writeDisk } from '../../src/disk/io.js';
import { createSnapshot, deleteSnapshot } from '../../src/disk/snapshots.js';
import { checkStore } from '../../src/check/check.js';
import { storeStatus, renderStatus } from '../../src/control/status.js';
import { cleanupDirs, expectCode, prng, randomBytes, tempDir } from './helpers.js';

afterAll(cleanupDirs);

const K = 1024;
const BUF = { valueEncoding: 'buffer' } as const;

async function blockKeys(db: Db): Promise<string[]> {
  const out: string[] = [];
  for await (const k of db.keys({ gte: BLOCK_PREFIX, lt: prefixEnd(BLOCK_PREFIX) })) out.push(k);
  return out;
}

/** The block keys of a closed store, read without opening a Registry (whose open would sweep them). */
async function storedBlockKeys(dir: string): Promise<string[]> {
  const { db } = await openDb(dir);
  try {
    return await blockKeys(db);
  } finally {
    await db.close();
  }
}

async function rawValue(db: Db, key: string): Promise<Buffer | undefined> {
  const [v] = (await db.getMany<string, Buffer>([key], BUF)) as (Buffer | undefined)[];
  return v;
}

async function withStore(fn: (db: Db, dir: string) => Promise<void>): Promise<void> {
  const dir = await tempDir();
  const { db } = await openDb(dir, { blockStore: 'leveldb' });
  try {
    await fn(db, dir);
  } finally {
    await db.close();
  }
}

describe('LevelBlockStore', () => {
  it('stores whole blocks as binary values and reads them back, whole and in sub-ranges', () =>
    withStore(async (db) => {
      const rnd = prng(11);
      const s = new LevelBlockStore(db, 4096);
      const data = randomBytes(rnd, 4096);
      data[17] = 0; // a NUL and bytes that are not valid UTF-8 must survive
      data[18] = 0xff;
      await s.write(3, data);
      const raw = await rawValue(db, 'b!00001000!000000000003');
      expect(raw?.equals(data)).toBe(true);
      const out = Buffer.alloc(4096, 0xee);
      await s.read(3, out);
      expect(out.equals(data)).toBe(true);
      const part = Buffer.alloc(100);
      await s.read(3, part, 1000);
      expect(part.equals(data.subarray(1000, 1100))).toBe(true);
      const tail = Buffer.alloc(7);
      await s.read(3, tail, 4089);
      expect(tail.equals(data.subarray(4089))).toBe(true);
    }));

  it('merges partial writes with the current block (read-modify-write); unwritten parts read as zeros', () =>
    withStore(async (db) => {
      const rnd = prng(12);
      const s = new LevelBlockStore(db, 8192);
      const model = Buffer.alloc(8192);
      // a partial write to a block never written: the rest is zeros
      const a = randomBytes(rnd, 333);
      await s.write(5, a, 1001);
      a.copy(model, 1001);
      const out = Buffer.alloc(8192, 0xee);
      await s.read(5, out);
      expect(out.equals(model)).toBe(true);
      expect((await rawValue(db, blockKey(8192, 5)))?.length).toBe(8192);
      // more partial writes at odd offsets, including the last byte and the first
      for (const [off, len] of [[0, 1], [8191, 1], [4095, 2], [7000, 1192], [1200, 50]] as const) {
        const d = randomBytes(rnd, len);
        await s.write(5, d, off);
        d.copy(model, off);
      }
      await s.read(5, out);
      expect(out.equals(model)).toBe(true);
      // concurrent partial writes to one block (disjoint ranges): none may be lost
      const writes = [[10, 20], [40, 3000], [3100, 100], [8000, 150]].map(([off, len]) => ({ off: off!, d: randomBytes(rnd, len!) }));
      await Promise.all(writes.map((w) => s.write(5, w.d, w.off)));
      for (const w of writes) w.d.copy(model, w.off);
      await s.read(5, out);
      expect(out.equals(model)).toBe(true);
    }));

  it('reads a pbn without a value as zeros, whole or in part', () =>
    withStore(async (db) => {
      const s = new LevelBlockStore(db, 4096);
      const out = Buffer.alloc(4096, 0xee);
      await s.read(123456, out);
      expect(out.every((b) => b === 0)).toBe(true);
      const part = Buffer.alloc(10, 0xee);
      await s.read(7, part, 4086);
      expect(part.every((b) => b === 0)).toBe(true);
    }));

  it('keeps block sizes apart (pbns are numbered per block size)', () =>
    withStore(async (db) => {
      const s4 = new LevelBlockStore(db, 4096);
      const s8 = new LevelBlockStore(db, 8192);
      await s4.write(1, Buffer.alloc(4096, 4));
      await s8.write(1, Buffer.alloc(8192, 8));
      const a = Buffer.alloc(4096);
      const b = Buffer.alloc(8192);
      await s4.read(1, a);
      await s8.read(1, b);
      expect(a.every((x) => x === 4)).toBe(true);
      expect(b.every((x) => x === 8)).toBe(true);
      expect(await blockKeys(db)).toEqual([blockKey(4096, 1), blockKey(8192, 1)]);
    }));

  it('refuses a range outside the block', () =>
    withStore(async (db) => {
      const s = new LevelBlockStore(db, 4096);
      await expect(s.write(0, Buffer.alloc(10), 4090)).rejects.toThrow(RangeError);
      await expect(s.read(0, Buffer.alloc(4097))).rejects.toThrow(RangeError);
    }));

  it('discard deletes the value; a write issued right after the discard is not undone by it', () =>
    withStore(async (db) => {
      const s = new LevelBlockStore(db, 4096);
      for (let pbn = 0; pbn < 5; pbn++) await s.write(pbn, Buffer.alloc(4096, pbn + 1));
      await Promise.all([s.discard(0), s.discard(1)]);
      expect(await blockKeys(db)).toEqual([2, 3, 4].map((p) => blockKey(4096, p)));
      const out = Buffer.alloc(4096, 0xee);
      await s.read(0, out);
      expect(out.every((b) => b === 0)).toBe(true);
      // The pbn is freed and at once reused, as the allocator may do: discard and new write in flight
      // together; the discard was issued first and must not delete the new data.
      const fresh = Buffer.alloc(4096, 0x77);
      const both = [s.discard(2), s.write(2, fresh)];
      // and a partial write after a discard merges with zeros, not with the discarded data
      both.push(s.discard(3), s.write(3, Buffer.from('abc'), 100));
      await Promise.all(both);
      await s.read(2, out);
      expect(out.equals(fresh)).toBe(true);
      await s.read(3, out);
      expect(out.subarray(100, 103).toString()).toBe('abc');
      expect(out.subarray(0, 100).every((b) => b === 0) && out.subarray(103).every((b) => b === 0)).toBe(true);
      // many discards (batched) at once
      for (let pbn = 10; pbn < 2600; pbn++) await s.write(pbn, Buffer.alloc(4096, 1));
      await Promise.all(Array.from({ length: 2590 }, (_, i) => s.discard(10 + i)));
      expect(await blockKeys(db)).toEqual([2, 3, 4].map((p) => blockKey(4096, p)));
      await s.close();
    }));

  it('sync makes written blocks durable; they are there after the database is reopened', async () => {
    const dir = await tempDir();
    const rnd = prng(13);
    const data = randomBytes(rnd, 65536);
    {
      const { db } = await openDb(dir, { blockStore: 'leveldb' });
      const s = new LevelBlockStore(db, 65536);
      await s.write(9, data);
      await s.write(9, Buffer.from('partial'), 65000);
      await s.sync();
      await s.close();
      await db.close();
    }
    data.write('partial', 65000);
    const { db } = await openDb(dir);
    try {
      const s = new LevelBlockStore(db, 65536);
      const out = Buffer.alloc(65536);
      await s.read(9, out);
      expect(out.equals(data)).toBe(true);
    } finally {
      await db.close();
    }
  });

  it('sweepBlocks deletes exactly the values the predicate calls unreferenced (or only counts them)', () =>
    withStore(async (db) => {
      const s = new LevelBlockStore(db, 4096);
      for (let pbn = 0; pbn < 2500; pbn++) await s.write(pbn, Buffer.alloc(4096, 1));
      await db.put('b!garbage', 'x');
      const used = (bs: number, pbn: number): boolean => bs === 4096 && pbn % 3 === 0;
      const dry = await sweepBlocks(db, used, { dryRun: true });
      expect(dry.present.get(4096)).toBe(834);
      expect(dry.orphans).toBe(2500 - 834 + 1);
      expect((await blockKeys(db)).length).toBe(2501);
      const wet = await sweepBlocks(db, used);
      expect(wet.orphans).toBe(2500 - 834 + 1);
      expect(wet.orphanBytes).toBe((2500 - 834) * 4096);
      const left = await blockKeys(db);
      expect(left.length).toBe(834);
      expect(left.every((k) => parseInt(k.slice(-12), 16) % 3 === 0)).toBe(true);
    }));
});

describe('a store with block data in LevelDB', () => {
  it('keeps every block in LevelDB (no pool files) and reads the same data after reopening', async () => {
    const dir = await tempDir();
    const rnd = prng(21);
    let reg = await Registry.open({ dir, blockStore: 'leveldb' });
    expect(reg.blockStore).toBe('leveldb');
    await reg.create('a', 1024 * K, 4096);
    await reg.create('b', 1024 * K, 65536);
    const model = { a: Buffer.alloc(1024 * K), b: Buffer.alloc(1024 * K) };
    for (let i = 0; i < 40; i++) {
      const name = i % 2 ? 'a' : 'b';
      const off = Math.floor(rnd() * (1024 * K - 70_000));
      const data = randomBytes(rnd, 1 + Math.floor(rnd() * 70_000));
      await writeDisk(reg.ctx, reg.disk(name), off, data);
      data.copy(model[name], off);
    }
    expect(storeStatus(reg).pool.blockStore).toBe('leveldb');
    expect(renderStatus(storeStatus(reg))).toMatch(/block data in LevelDB/);
    await reg.close();
    expect((await readdir(dir)).filter((f) => f.startsWith('pool-'))).toEqual([]);
    // The bottom is recorded: opened without the option, the store is still a LevelDB store.
    reg = await Registry.open({ dir });
    try {
      expect(reg.blockStore).toBe('leveldb');
      for (const name of ['a', 'b'] as const) {
        const out = Buffer.alloc(1024 * K);
        await readView(reg.ctx, reg.disk(name), -1, 0, out);
        expect(out.equals(model[name]), `disk ${name}`).toBe(true);
      }
    } finally {
      await reg.close();
    }
  });

  it('records the bottom in the format record; asking for the other one is INVALID and names both', async () => {
    const dir = await tempDir();
    await (await Registry.open({ dir, blockStore: 'leveldb' })).close();
    const reg = await Registry.open({ dir, blockStore: 'leveldb' });
    const [format] = await reg.ctx.db.getMany([FORMAT_KEY]);
    expect(JSON.parse(format!)).toMatchObject({ magic: 'vdiskfs-store', version: STORE_VERSION_LEVELDB, blockStore: 'leveldb' });
    await reg.close();
    const err = await expectCode(Registry.open({ dir, blockStore: 'file' }), 'INVALID');
    expect(err.message).toMatch(/'leveldb'/);
    expect(err.message).toMatch(/'file'/);
    // the refused open left the store usable (LevelDB lock released)
    await (await Registry.open({ dir })).close();

    const fileDir = await tempDir();
    await (await Registry.open({ dir: fileDir })).close();
    const err2 = await expectCode(Registry.open({ dir: fileDir, blockStore: 'leveldb' }), 'INVALID');
    expect(err2.message).toMatch(/'file'.*'leveldb'/);
  });

  it('a store whose format record has no blockStore field (written before it existed) is a file store', async () => {
    const dir = await tempDir();
    const { db } = await openDb(dir);
    await db.put(FORMAT_KEY, JSON.stringify({ magic: 'vdiskfs-store', version: 1, created: '2026-11-01T00:00:00.000Z' }));
    await db.close();
    const reg = await Registry.open({ dir });
    expect(reg.blockStore).toBe('file');
    // opened for use, it was upgraded to the current version (KEYSPACE.md Changelog), the field written
    expect(JSON.parse((await reg.ctx.db.getMany([FORMAT_KEY]))[0]!)).toMatchObject({ magic: 'vdiskfs-store', version: STORE_VERSION, blockStore: 'file' });
    await reg.close();
    await expectCode(Registry.open({ dir, blockStore: 'leveldb' }), 'INVALID');
    await (await Registry.open({ dir, blockStore: 'file' })).close();
  });

  it('deletes the values of freed blocks: zero writes, overwrites a snapshot holds, deleted snapshots and disks', async () => {
    const dir = await tempDir();
    const rnd = prng(22);
    const reg = await Registry.open({ dir, blockStore: 'leveldb' });
    await reg.create('d', 256 * K, 4096);
    const d = reg.disk('d');
    await writeDisk(reg.ctx, d, 0, randomBytes(rnd, 64 * K)); // 16 blocks
    await writeDisk(reg.ctx, d, 0, Buffer.alloc(8 * K)); // frees 2
    await reg.sync();
    expect(await blockKeys(reg.ctx.db)).toHaveLength(14);
    await createSnapshot(reg.ctx, d, 's1');
    await writeDisk(reg.ctx, d, 16 * K, randomBytes(rnd, 16 * K)); // 4 blocks moved to s1, 4 new
    await reg.sync();
    expect(await blockKeys(reg.ctx.db)).toHaveLength(18);
    await deleteSnapshot(reg.ctx, d, 's1');
    await reg.sync();
    expect(await blockKeys(reg.ctx.db)).toHaveLength(14);
    await reg.delete('d');
    await reg.close();
    expect(await storedBlockKeys(dir)).toEqual([]);
  });

  it('discards the blocks of a disk deleted before any I/O opened the block store', async () => {
    const dir = await tempDir();
    const rnd = prng(23);
    let reg = await Registry.open({ dir, blockStore: 'leveldb' });
    await reg.create('d', 256 * K, 8192);
    await writeDisk(reg.ctx, reg.disk('d'), 0, randomBytes(rnd, 100 * K));
    await reg.close();
    expect(await storedBlockKeys(dir)).toHaveLength(13);
    reg = await Registry.open({ dir });
    await reg.delete('d'); // frees 13 blocks while the 8K store is not open yet
    await reg.close();
    expect(await storedBlockKeys(dir)).toEqual([]);
  });

  it('open deletes block values no table references; check reports them as leaks first', async () => {
    const dir = await tempDir();
    const rnd = prng(24);
    let reg = await Registry.open({ dir, blockStore: 'leveldb' });
    await reg.create('d', 256 * K, 4096);
    const data = randomBytes(rnd, 12 * K);
    await writeDisk(reg.ctx, reg.disk('d'), 0, data); // pbns 0..2
    await reg.close();
    // Values a crash could leave behind: a freed block whose delete was lost, another block size.
    {
      const { db } = await openDb(dir);
      await db.put(blockKey(4096, 40), Buffer.alloc(4096, 1), BUF);
      await db.put(blockKey(65536, 0), Buffer.alloc(65536, 2), BUF);
      await db.close();
    }
    const r = await checkStore(dir);
    expect(r.blockStore).toBe('leveldb');
    expect(r.errors).toEqual([]);
    expect(r.leaks).toHaveLength(1);
    expect(r.leaks[0]).toMatch(/2 block values \(69632 bytes\)/);
    expect(r.poolBytes).toBe(3 * 4096 + 4096 + 65536);
    expect(await storedBlockKeys(dir)).toHaveLength(5); // check without --repair changes nothing
    reg = await Registry.open({ dir });
    await reg.close();
    expect(await storedBlockKeys(dir)).toEqual([0, 1, 2].map((p) => blockKey(4096, p)));
    reg = await Registry.open({ dir });
    const out = Buffer.alloc(12 * K);
    await readView(reg.ctx, reg.disk('d'), -1, 0, out);
    expect(out.equals(data)).toBe(true);
    await reg.close();
    expect((await checkStore(dir)).leaks).toEqual([]);
  });

  it('check --repair deletes unreferenced values; a referenced block without a value is an error', async () => {
    const dir = await tempDir();
    const rnd = prng(25);
    const reg = await Registry.open({ dir, blockStore: 'leveldb' });
    await reg.create('d', 256 * K, 4096);
    await writeDisk(reg.ctx, reg.disk('d'), 0, randomBytes(rnd, 12 * K));
    await reg.close();
    {
      const { db } = await openDb(dir);
      await db.put(blockKey(4096, 7), Buffer.alloc(4096, 1), BUF);
      await db.del(blockKey(4096, 1));
      await db.close();
    }
    const r = await checkStore(dir, { repair: true });
    expect(r.errors).toEqual(['1 referenced block(s) of 4096 bytes have no value in LevelDB (they read as zeros)']);
    expect(r.repaired).toEqual(['deleted 1 unreferenced block values']);
    expect(await storedBlockKeys(dir)).toEqual([0, 2].map((p) => blockKey(4096, p)));
  });
});
