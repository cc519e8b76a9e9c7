// Discard (fallocate PUNCH_HOLE / ZERO_RANGE) and SEEK_DATA/SEEK_HOLE on the core, at odd offsets.
import { describe, it, expect, afterAll } from 'vitest';
import { Registry } from '../../src/disk/registry.js';
import type { DiskState } from '../../src/disk/context.js';
import { writeDisk, readView, discardRange } from '../../src/disk/io.js';
import { seekView } from '../../src/disk/extents.js';
import { createSnapshot, cloneSnapshot } from '../../src/disk/snapshots.js';
import { prng, randomBytes, tempDir, cleanupDirs } from './helpers.js';

afterAll(cleanupDirs);

const K = 1024;
const M = 1024 * K;
const G = 1024 * M;
const BS = 64 * K;

/** Buffers equal (toEqual on megabytes is slow): reports the first differing byte. */
function same(a: Buffer, b: Buffer): void {
  let i = 0;
  while (i < Math.min(a.length, b.length) && a[i] === b[i]) i++;
  expect(i === a.length && a.length === b.length ? -1 : i, 'first differing byte').toBe(-1);
}

async function read(reg: Registry, d: DiskState, offset: number, length: number, snap = -1): Promise<Buffer> {
  const b = Buffer.alloc(length, 0xee);
  const n = await readView(reg.ctx, d, snap, offset, b);
  return b.subarray(0, n);
}

describe('discardRange', () => {
  it('frees the whole blocks, zeros the partial ends, and the snapshot keeps its bytes', async () => {
    const dir = await tempDir();
    let reg = await Registry.open({ dir });
    await reg.create('d', 4 * M, BS);
    const d = reg.disk('d');
    const data = randomBytes(prng(7), M);
    await writeDisk(reg.ctx, d, 0, data);
    await reg.sync();
    expect(d.allocated).toBe(16);

    // Without a snapshot: blocks 1 and 2 are whole in the range and are freed; 0 and 3 keep their outside bytes.
    const off = 100;
    const len = 3 * BS + 500;
    await discardRange(reg.ctx, d, off, len);
    await reg.sync();
    const want = Buffer.from(data);
    want.fill(0, off, off + len);
    same(await read(reg, d, 0, M), want);
    expect(d.allocated).toBe(14);
    expect(reg.ctx.pool.usedBytes()).toBe(14 * BS);

    // With a snapshot: the live disk reads zeros, the snapshot reads what it held, nothing it holds is freed.
    await createSnapshot(reg.ctx, d, 's');
    const off2 = 5 * BS + 333;
    const len2 = 6 * BS + 4097;
    await discardRange(reg.ctx, d, off2, len2);
    await reg.sync();
    const want2 = Buffer.from(want);
    want2.fill(0, off2, off2 + len2);
    same(await read(reg, d, 0, M), want2);
    same(await read(reg, d, 0, M, 0), want);
    // blocks 6..10 (5 whole blocks) leave the live table; 5 and 11 got new copies (redirect-on-write)
    expect(d.allocated).toBe(14 - 5);
    expect(reg.ctx.pool.usedBytes()).toBe((14 + 2) * BS);

    // Past the end: ignored; a range wholly past the end: nothing.
    await discardRange(reg.ctx, d, 4 * M - 10, 1000);
    await discardRange(reg.ctx, d, 5 * M, 1000);

    // Durable: the same after reopening.
    await reg.close();
    reg = await Registry.open({ dir });
    const d2 = reg.disk('d');
    want2.fill(0, 4 * M - 10);
    same(await read(reg, d2, 0, 4 * M), Buffer.concat([want2, Buffer.alloc(3 * M)]).subarray(0, 4 * M));
    same(await read(reg, d2, 0, M, 0), want);
    await reg.close();
  });

  it('hides a clone\'s backing data with zero entries and leaves the origin alone', async () => {
    const dir = await tempDir();
    const reg = await Registry.open({ dir });
    await reg.create('o', 2 * M, BS);
    const o = reg.disk('o');
    const data = randomBytes(prng(3), 2 * M);
    await writeDisk(reg.ctx, o, 0, data);
    await createSnapshot(reg.ctx, o, 's');
    await cloneSnapshot(reg.ctx, o, 's', 'c');
    const c = reg.disk('c');
    await writeDisk(reg.ctx, c, 7 * BS, Buffer.alloc(BS, 9)); // the clone's own block
    await discardRange(reg.ctx, c, BS + 1, 10 * BS);
    await reg.sync();
    const want = Buffer.from(data);
    want.fill(9, 7 * BS, 8 * BS);
    want.fill(0, BS + 1, 11 * BS + 1);
    same(await read(reg, c, 0, 2 * M), want);
    same(await read(reg, o, 0, 2 * M), data);
    same(await read(reg, o, 0, 2 * M, 0), data);
    // data of the clone: block 1 (its head, merged), block 11 (its tail); the discarded own block 7 is gone
    expect(c.allocated).toBe(2);
    await reg.close();
  });
});

describe('seekView (SEEK_DATA / SEEK_HOLE)', () => {
  it('answers from the tables on a huge disk, its snapshot and a clone, at odd offsets', async () => {
    const dir = await tempDir();
    const reg = await Registry.open({ dir });
    const size = 1024 * G; // 1 TiB: a walk over the virtual size would take minutes
    await reg.create('d', size, BS);
    const d = reg.disk('d');
    const far = 1_000_000;
    await writeDisk(reg.ctx, d, 3 * BS + 5, Buffer.alloc(2 * BS, 1)); // blocks 3, 4, 5 (partly)
    await writeDisk(reg.ctx, d, far * BS, Buffer.alloc(BS, 2));
    // not synced: staged entries count before their batch commits
    const seek = (what: 'data' | 'hole', off: number, snap = -1, disk = d) => seekView(reg.ctx, disk, snap, off, what);
    expect(await seek('data', 0)).toBe(3 * BS);
    expect(await seek('data', 3 * BS + 7)).toBe(3 * BS + 7);
    expect(await seek('hole', 7)).toBe(7);
    expect(await seek('hole', 3 * BS + 7)).toBe(6 * BS);
    expect(await seek('data', 6 * BS + 1)).toBe(far * BS);
    expect(await seek('hole', far * BS + 9)).toBe((far + 1) * BS);
    expect(await seek('data', (far + 1) * BS)).toBeNull();
    expect(await seek('hole', size - 1)).toBe(size - 1);
    expect(await seek('data', size)).toBeNull();
    expect(await seek('hole', size)).toBeNull();
    await reg.sync();
    expect(await seek('data', 1)).toBe(3 * BS);

    // snapshot, then punch block 4 and write block 10 live: the snapshot still sees 3..5, the live disk not 4
    await createSnapshot(reg.ctx, d, 's');
    await discardRange(reg.ctx, d, 4 * BS, BS);
    await writeDisk(reg.ctx, d, 10 * BS, Buffer.alloc(100, 3));
    expect(await seek('hole', 3 * BS)).toBe(4 * BS);
    expect(await seek('data', 4 * BS + 3)).toBe(5 * BS);
    expect(await seek('hole', 3 * BS, 0)).toBe(6 * BS);
    expect(await seek('data', 6 * BS, 0)).toBe(far * BS);
    expect(await seek('data', 7 * BS)).toBe(10 * BS);

    // a clone of the snapshot: the backing's data counts as data until the clone hides it
    await cloneSnapshot(reg.ctx, d, 's', 'c');
    const c = reg.disk('c');
    expect(await seek('data', 0, -1, c)).toBe(3 * BS);
    expect(await seek('hole', 3 * BS + 11, -1, c)).toBe(6 * BS);
    await writeDisk(reg.ctx, c, 20 * BS, Buffer.alloc(BS, 4));
    await discardRange(reg.ctx, c, 3 * BS, BS);
    expect(await seek('data', 1, -1, c)).toBe(4 * BS);
    expect(await seek('data', 6 * BS, -1, c)).toBe(20 * BS);
    expect(await seek('hole', 20 * BS + 1, -1, c)).toBe(21 * BS);
    expect(await seek('data', 21 * BS, -1, c)).toBe(far * BS);
    await reg.close();
  });
});
