// Block checksums (issue 17, disk/sums.ts): bytes changed inside a pool file are never read back as data:
// a read gets CORRUPT (EIO), status counts it, an image of a snapshot holding the block fails, `check
// --verify-data` and scrub name it by disk, snapshot and offset. Writes in place drop a block's checksums
// and the sealer gives them back; shared blocks share checksums.
import { afterAll, describe, expect, it } from 'vitest';
import { open, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Registry } from '../../src/disk/registry.js';
import { readView, writeDisk, writeDiskNow } from '../../src/disk/io.js';
import { createSnapshot } from '../../src/disk/snapshots.js';
import { checkStore } from '../../src/check/check.js';
import { sealDue } from '../../src/disk/scrub.js';
import { producerFor } from '../../src/image/snapshotImage.js';
import { storeStatus } from '../../src/control/status.js';
import { runLine } from '../../src/control/commands.js';
import { EntryCache, entryCost } from '../../src/meta/table.js';
import { encodeEntry, type DataEntry } from '../../src/meta/keys.js';
import { cleanupDirs, tempDir } from './helpers.js';

afterAll(cleanupDirs);

const BS = 64 * 1024;
const K = 1024;

function pattern(n: number, seed: number): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed * 7 + (i >> 9)) & 0xff;
  return b;
}

/** Flip bytes of the pool file at the block lbn of disk d points at (+ offsetInBlock). */
async function damage(reg: Registry, dir: string, table: 'live' | number, lbn: number, offsetInBlock: number): Promise<number> {
  const d = reg.disk('d');
  const t = table === 'live' ? d.live : d.snapTable(d.rec.snapshots[table]!.id);
  const e = await t.get(lbn);
  if (e?.kind !== 'data') throw new Error(`block ${lbn} has no data`);
  const fh = await open(join(dir, `pool-${BS}.dat`), 'r+');
  try {
    const b = Buffer.alloc(4);
    await fh.read(b, 0, 4, e.pbn * BS + offsetInBlock);
    for (let i = 0; i < 4; i++) b[i] = b[i]! ^ 0x5a;
    await fh.write(b, 0, 4, e.pbn * BS + offsetInBlock);
  } finally {
    await fh.close();
  }
  return e.pbn;
}

async function read(reg: Registry, offset: number, length: number, snapIndex = -1): Promise<Buffer> {
  const b = Buffer.alloc(length);
  await readView(reg.ctx, reg.disk('d'), snapIndex, offset, b);
  return b;
}

/** A disk of 16 blocks of known content, synced (checksums trusted) and closed. */
async function store(): Promise<{ dir: string; data: Buffer }> {
  const dir = await tempDir();
  const reg = await Registry.open({ dir });
  await reg.create('d', 16 * BS, BS);
  const data = pattern(16 * BS, 1);
  await writeDisk(reg.ctx, reg.disk('d'), 0, data);
  await reg.sync();
  await reg.close();
  return { dir, data };
}

/**
 * Damage on the device, seen once it is read from there (a new open: not from what the daemon read before):
 * the live block lbn, changed at offsetInBlock, reads as CORRUPT.
 */
async function expectDamageSeen(dir: string, lbn: number, offsetInBlock: number): Promise<void> {
  const reg = await Registry.open({ dir });
  try {
    await damage(reg, dir, 'live', lbn, offsetInBlock);
    await expect(read(reg, lbn * BS, BS)).rejects.toMatchObject({ code: 'CORRUPT' });
  } finally {
    await reg.close();
  }
}

/** store(), opened: fn gets the registry (closed afterwards), the store's directory and the disk's data. */
async function withOpenStore(fn: (reg: Registry, dir: string, data: Buffer) => Promise<void>): Promise<void> {
  const { dir, data } = await store();
  const reg = await Registry.open({ dir });
  try {
    await fn(reg, dir, data);
  } finally {
    await reg.close();
  }
}

describe('block checksums', () => {
  it('a damaged block reads as CORRUPT (EIO), never as data; its other sectors and other blocks read', async () => {
    await withOpenStore(async (reg, dir, data) => {
      await damage(reg, dir, 'live', 3, 5000); // sector 1 of block 3
      await expect(read(reg, 3 * BS, BS)).rejects.toMatchObject({ code: 'CORRUPT', message: expect.stringMatching(/checksum mismatch: disk d, block 3 \(byte 196608\), sector at byte 4096/) });
      await expect(read(reg, 3 * BS + 4100, 10)).rejects.toMatchObject({ code: 'CORRUPT' }); // unaligned, inside the sector
      expect((await read(reg, 3 * BS + 8192, 4096)).equals(data.subarray(3 * BS + 8192, 3 * BS + 12288))).toBe(true); // the next sector
      expect((await read(reg, 4 * BS, BS)).equals(data.subarray(4 * BS, 5 * BS))).toBe(true);
      const st = storeStatus(reg);
      expect(st.checksums.damaged).toBeGreaterThanOrEqual(2);
      expect(st.checksums.recent.at(-1)?.where).toMatch(/disk d, block 3/);
      // Overwriting the whole block replaces the damage.
      await writeDisk(reg.ctx, reg.disk('d'), 3 * BS, pattern(BS, 9));
      expect((await read(reg, 3 * BS, BS)).equals(pattern(BS, 9))).toBe(true);
    });
  });

  it('check --verify-data names the damaged block; a plain check does not read data', async () => {
    const { dir } = await store();
    const reg = await Registry.open({ dir });
    await damage(reg, dir, 'live', 7, 0);
    await reg.close();
    expect((await checkStore(dir)).errors).toEqual([]);
    const r = await checkStore(dir, { verifyData: true });
    expect(r.errors).toHaveLength(1);
    expect(r.errors[0]).toMatch(/damaged block: d at byte 458752 \(block 7, pool block \d+\): checksum mismatch in the sector at byte 0/);
    expect(r.data).toMatchObject({ verified: 16, unverified: 0 });
  });

  it('a snapshot shares the checksums of the blocks it holds: its reads and its image fail on damage', async () => {
    await withOpenStore(async (reg, dir, data) => {
      const d = reg.disk('d');
      await createSnapshot(reg.ctx, d, 's');
      await writeDisk(reg.ctx, d, 2 * BS, pattern(BS, 5)); // block 2 moves into s's table with its checksums
      const held = await d.snapTable(d.rec.snapshots[0]!.id).get(2);
      expect(held?.kind === 'data' && held.sums).toBeTypeOf('string');
      await damage(reg, dir, 0, 2, 60 * K);
      await expect(read(reg, 2 * BS, BS, 0)).rejects.toMatchObject({ code: 'CORRUPT' });
      expect((await read(reg, 2 * BS, BS)).equals(pattern(BS, 5))).toBe(true); // the live disk has its own block
      const producer = await producerFor({ view: reg.snapshotView('d', 's') });
      const chunk = Buffer.alloc(1024 * 1024);
      const readAll = async (): Promise<void> => {
        for (let pos = 0; pos < producer.size; pos += chunk.length) await producer.readInto(pos, chunk);
      };
      await expect(readAll()).rejects.toMatchObject({ code: 'CORRUPT', message: expect.stringMatching(/d@s, block 2/) });
    });
  });

  it('a write in place drops the checksums (durably first), the sealer gives them back, and they hold', async () => {
    const { dir, data } = await store();
    const reg = await Registry.open({ dir });
    try {
      const d = reg.disk('d');
      const before = await d.live.get(5);
      expect(before?.kind === 'data' && before.sums).toBeTypeOf('string');
      await writeDisk(reg.ctx, d, 5 * BS + 8 * K, pattern(4 * K, 3));
      const dirty = await d.live.get(5);
      expect(dirty).toMatchObject({ kind: 'data', pbn: (before as { pbn: number }).pbn });
      expect((dirty as { sums?: string }).sums).toBeUndefined();
      expect(d.dirty.has(5)).toBe(true);
      expect(storeStatus(reg).checksums.unverified).toBe(1);
      expect(await sealDue(reg.ctx, true)).toBe(1);
      const sealed = await d.live.get(5);
      expect((sealed as { sums?: string }).sums).toBeTypeOf('string');
      const want = Buffer.from(data.subarray(5 * BS, 6 * BS));
      pattern(4 * K, 3).copy(want, 8 * K);
      expect((await read(reg, 5 * BS, BS)).equals(want)).toBe(true);
      await reg.sync(); // the seal's generation settles: trusted from now on
    } finally {
      await reg.close();
    }
    await expectDamageSeen(dir, 5, 8 * K + 1);
  });

  it("the background sealer's pass stops when a writer comes (the next pass goes on)", async () => {
    await withOpenStore(async (reg) => {
      const d = reg.disk('d');
      for (let b = 0; b < 8; b++) await writeDisk(reg.ctx, d, b * BS + 4 * K, pattern(4 * K, b)); // in place: unverified
      for (const lbn of d.dirty.keys()) d.dirty.set(lbn, 1); // idle long enough
      const pass = sealDue(reg.ctx, false, true);
      const write = writeDisk(reg.ctx, d, 12 * BS, pattern(4 * K, 9)); // a writer, while the first block is sealed
      expect(await pass).toBe(1);
      await write;
      expect(await sealDue(reg.ctx)).toBe(7); // without yielding: the rest (block 12 was written just now)
    });
  });

  it('scrub reads every block, seals the unverified ones and reports the damaged ones in status and history', async () => {
    await withOpenStore(async (reg, dir, data) => {
      const d = reg.disk('d');
      await createSnapshot(reg.ctx, d, 's');
      await writeDisk(reg.ctx, d, 0, pattern(BS, 4)); // block 0: a new block; the old one is s's
      await writeDisk(reg.ctx, d, 0, pattern(4 * K, 6)); // in place: block 0 unverified
      await reg.sync();
      await damage(reg, dir, 0, 0, 100); // s's block 0
      await expect(runLine(reg, 'scrub nosuch')).rejects.toMatchObject({ code: 'NOT_FOUND' });
      expect(await runLine(reg, 'scrub d rate=1G/s')).toMatch(/scrub of d started at 1G\/s at most/);
      await reg.scrubJob!.done;
      const st = storeStatus(reg);
      expect(st.checksums.scrub).toMatchObject({ blocks: 17, total: 17, sealed: 1, damaged: [{ view: 'd@s', offset: 0 }] });
      expect(st.checksums.scrub!.summary).toMatch(/scrub of d done: 17 of 17 blocks read \(16 verified, 1 sealed\), 1 damaged: d@s byte 0/);
      const e0 = await d.live.get(0);
      expect((e0 as { sums?: string }).sums).toBeTypeOf('string');
      expect(await runLine(reg, 'scrub stop')).toBe('no scrub is running');
    });
  });

  // Regression: entries with checksums are ~130 bytes, and LevelDB's iterator returns fewer entries per read
  // than a table prefetch asked for; the prefetch cached the rest as holes and reads returned zeros.
  it('a table read back from LevelDB after reopening finds every entry (prefetch across short reads)', async () => {
    const dir = await tempDir();
    const data = pattern(48 * 16 * BS, 2);
    const reg = await Registry.open({ dir });
    await reg.create('d', 64 * 16 * BS, BS);
    await writeDisk(reg.ctx, reg.disk('d'), 8 * BS, data);
    await reg.close();
    const again = await Registry.open({ dir });
    try {
      const got = Buffer.alloc(data.length);
      await readView(again.ctx, again.disk('d'), -1, 8 * BS, got);
      expect(got.equals(data)).toBe(true);
    } finally {
      await again.close();
    }
  });

  it('repair puts back exactly the damaged bytes from an image or a raw copy, and nothing else', async () => {
    // (A raw copy repairs the same way as the image: both are read at the block's offset, checked against
    // its checksums; the wrong copy below shows that only matching bytes are taken.)
    const { dir, data } = await store();
    const reg = await Registry.open({ dir });
    try {
      await createSnapshot(reg.ctx, reg.disk('d'), 's');
      // An image of d@s, and a raw copy of the disk, made while it was intact; and a copy of something else.
      const producer = await producerFor({ view: reg.snapshotView('d', 's') });
      const img = Buffer.alloc(producer.size);
      await producer.readInto(0, img);
      const work = await tempDir();
      await writeFile(join(work, 'd.img'), img);
      await writeFile(join(work, 'd.raw'), data);
      await writeFile(join(work, 'other.raw'), pattern(16 * BS, 7));
      await damage(reg, dir, 'live', 3, 4 * K);
      await damage(reg, dir, 'live', 9, 0);
      await expect(runLine(reg, `repair d ${join(work, 'other.raw')}`)).resolves.toMatch(/0 of 2 damaged block\(s\) repaired; 2 still damaged/);
      await expect(runLine(reg, `repair d d.raw`)).rejects.toMatchObject({ code: 'INVALID' });
      expect(await runLine(reg, `repair d ${join(work, 'd.img')}`)).toMatch(/repair d: 2 of 2 damaged block\(s\) repaired \(d byte 196608, d byte 589824\)/);
      expect((await read(reg, 0, 16 * BS)).equals(data)).toBe(true);
      expect(await runLine(reg, `repair d ${join(work, 'd.raw')}`)).toBe('repair d: no damaged block');
    } finally {
      await reg.close();
    }
    expect((await checkStore(dir, { verifyData: true })).errors).toEqual([]);
    const again = await Registry.open({ dir }); // nothing of it read yet
    try {
      await damage(again, dir, 'live', 5, 0);
      expect(await runLine(again, `repair d ${join(await tempDir(), 'none')}`).catch((e: Error) => e.message)).toMatch(/ENOENT|no such file/);
      const raw = join(await tempDir(), 'd.raw');
      await writeFile(raw, data);
      expect(await runLine(again, `repair d ${raw}`)).toMatch(/repair d: 1 of 1 damaged block\(s\) repaired \(d byte 327680\)/);
      expect((await read(again, 0, 16 * BS)).equals(data)).toBe(true);
    } finally {
      await again.close();
    }
  });

  it('after a crash, checksums no fsync settled are not trusted; the sealer gives those blocks new ones', async () => {
    const { dir, data } = await store();
    const reg = await Registry.open({ dir });
    await writeDisk(reg.ctx, reg.disk('d'), 12 * BS, pattern(BS, 8)); // in place, then a seal, never fsync'd
    await sealDue(reg.ctx, true);
    expect((await reg.disk('d').live.get(12)) as { sums?: string }).toHaveProperty('sums');
    // The crash: the batches are in LevelDB's log, nothing is flushed or closed cleanly.
    await reg.ctx.drain();
    reg.ctx.stop();
    await reg.ctx.pool.close({ trim: false });
    await reg.ctx.db.close();
    const again = await Registry.open({ dir });
    try {
      // As if the seal's batch survived a power cut and the block's data did not: it reads as it is.
      await damage(again, dir, 'live', 12, 0);
      const got = await read(again, 12 * BS, BS);
      expect(got.equals(pattern(BS, 8))).toBe(false);
      expect(again.ctx.integrity.errors).toBe(0);
      expect(again.disk('d').dirty.has(12), 'queued for the sealer at open').toBe(true);
      // The write in place recorded its region's write intent: after the crash every block of the region
      // is unverified until sealed again (its entry may have kept checksums its data no longer has).
      expect(again.ctx.integrity.demoted).toEqual([[0, 0, again.ctx.integrity.gen - 1]]);
      expect(again.disk('d').dirty.has(11), 'a block of the same region').toBe(true);
      expect((await read(again, 11 * BS, BS)).equals(data.subarray(11 * BS, 12 * BS))).toBe(true);
      expect(await sealDue(again.ctx)).toBe(16); // the sealer's next pass
      await again.sync();
    } finally {
      await again.close();
    }
    await expectDamageSeen(dir, 12, 9000);
  });

  it('a write in place whose data reached the pool and whose entry did not (a crash) reads as written, unverified', async () => {
    const { dir } = await store();
    const reg = await Registry.open({ dir });
    const before = (await reg.disk('d').live.get(5)) as DataEntry;
    expect(reg.ctx.integrity.trusted(before)).toBe(true);
    const neu = pattern(8 * K, 9);
    await writeDisk(reg.ctx, reg.disk('d'), 5 * BS + 16 * K, neu);
    await reg.ctx.drain();
    // The crash, and the batch that dropped block 5's checksums lost with it: its old entry is back.
    reg.ctx.stop();
    await reg.ctx.pool.close({ trim: false });
    await reg.ctx.db.put(reg.disk('d').live.key(5), encodeEntry(before, true), { sync: true });
    await reg.ctx.db.close();
    const again = await Registry.open({ dir });
    try {
      const e5 = (await again.disk('d').live.get(5)) as DataEntry;
      expect(e5.sums, 'the old checksums are in the entry').toBe(before.sums);
      expect(again.ctx.integrity.trusted(e5), 'but no longer trusted').toBe(false);
      const got = await read(again, 5 * BS, BS);
      expect(got.subarray(16 * K, 24 * K).equals(neu)).toBe(true);
      expect(again.ctx.integrity.errors).toBe(0);
      expect(again.disk('d').dirty.has(5)).toBe(true);
      expect(await sealDue(again.ctx)).toBe(16);
      await again.sync();
    } finally {
      await again.close();
    }
    await expectDamageSeen(dir, 5, 100); // sealed again, and trusted once more
  });

  it('the fast path takes a write in place into a block with trusted checksums: dropped in a synced batch first', async () => {
    await withOpenStore(async (reg, dir, data) => {
      const d = reg.disk('d');
      const warm = Buffer.alloc(BS);
      await readView(reg.ctx, d, -1, 6 * BS, warm); // entries in memory
      const e = await d.live.get(6);
      expect(reg.ctx.integrity.trusted(e as DataEntry)).toBe(true);
      const neu = pattern(8 * K, 4);
      expect(writeDiskNow(reg.ctx, d, 6 * BS + 16 * K, neu)).toBe(8 * K);
      expect((d.live.peek(6) as { sums?: string }).sums, 'unsealed at once').toBeUndefined();
      await reg.ctx.drain();
      const stored = (await reg.ctx.db.getMany([d.live.key(6)]))[0]!;
      expect(stored).not.toContain(';'); // in LevelDB without checksums
      const want = Buffer.from(data.subarray(6 * BS, 7 * BS));
      neu.copy(want, 16 * K);
      expect((await read(reg, 6 * BS, BS)).equals(want)).toBe(true);
      expect(d.dirty.has(6)).toBe(true);
    });
  });

  // Regression: a write in place that waits for its synced batch shared a write-behind run with a new
  // block's write whose batch was queued before that synced one; the group of both waited for the run, which
  // waited for the group.
  it('writes in place waiting for their synced batch never hold up the batches queued before it', async () => {
    await withOpenStore(async (reg, dir, data) => {
      const d = reg.disk('d');
      const warm = Buffer.alloc(16 * BS);
      await readView(reg.ctx, d, -1, 0, warm); // entries in memory
      await reg.create('e', 16 * BS, BS);
      const e = reg.disk('e');
      await readView(reg.ctx, e, -1, 0, Buffer.alloc(16 * BS));
      const fresh = pattern(BS, 5);
      const inPlace = pattern(4 * K, 6);
      // One tick: a new block (its batch waits for its write), then a write in place into a trusted block.
      expect(writeDiskNow(reg.ctx, e, 0, fresh)).toBe(BS);
      expect(writeDiskNow(reg.ctx, d, 2 * BS, inPlace)).toBe(4 * K);
      const timeout = new Promise((_, rej) => setTimeout(() => rej(new Error('the pipeline is stuck')), 5000));
      await Promise.race([reg.sync(), timeout]);
      const want = Buffer.from(data.subarray(2 * BS, 3 * BS));
      inPlace.copy(want);
      expect((await read(reg, 2 * BS, BS)).equals(want)).toBe(true);
      const got = Buffer.alloc(BS);
      await readView(reg.ctx, e, -1, 0, got);
      expect(got.equals(fresh)).toBe(true);
    });
  });

  it('a sequential overwrite of blocks with trusted checksums waits for one synced batch (the write intent of its region), not one per request', async () => {
    await withOpenStore(async (reg, dir, data) => {
      const d = reg.disk('d');
      await readView(reg.ctx, d, -1, 0, Buffer.alloc(16 * BS)); // entries in memory
      const db = reg.ctx.db;
      const batch = db.batch.bind(db);
      let synced = 0;
      (db as { batch: unknown }).batch = (ops: unknown, o?: { sync?: boolean }) => {
        if (o?.sync) synced++;
        return (batch as (a: unknown, b: unknown) => Promise<void>)(ops, o);
      };
      const neu = pattern(16 * BS, 11);
      for (let b = 0; b < 16; b++) {
        expect(writeDiskNow(reg.ctx, d, b * BS, neu.subarray(b * BS, (b + 1) * BS)), `block ${b} by the fast path`).toBe(BS);
        await reg.ctx.drain();
      }
      expect(synced).toBe(1); // region 0's write intent, before block 0's write
      expect(reg.ctx.integrity.intended([15])).toBe(true);
      expect((await read(reg, 0, 16 * BS)).equals(neu)).toBe(true);
      expect(data.equals(neu)).toBe(false);
    });
  });

  it('the entry cache bounds the memory its entries take (entries of 1 MiB blocks carry 1.4 KB of checksums)', () => {
    const cache = new EntryCache(20_000);
    const sums = 'A'.repeat(1364) + '==';
    for (let i = 0; i < 100; i++) cache.set(`t!${i}`, { kind: 'data', pbn: i, epoch: 1, sums, gen: 1 });
    const kept = Array.from({ length: 100 }, (_, i) => cache.get(`t!${i}`)).filter((e) => e !== undefined).length;
    expect(kept).toBe(Math.floor(20_000 / entryCost({ kind: 'data', pbn: 0, epoch: 1, sums, gen: 1 }))); // 12
    expect(cache.get('t!99')).toMatchObject({ pbn: 99 }); // the newest are kept
    expect(cache.size.bytes).toBeLessThanOrEqual(20_000);
    for (let i = 0; i < 300; i++) cache.set(`u!${i}`, null); // small entries: more of them fit
    expect(Array.from({ length: 300 }, (_, i) => cache.get(`u!${i}`)).filter((e) => e !== undefined).length).toBe(Math.floor(20_000 / entryCost(null)));
    expect(cache.get('t!99')).toBeUndefined(); // the least recently used went first
  });
});
