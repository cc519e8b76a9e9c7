import { describe, it, expect } from 'vitest';
import { Allocator } from '../../src/store/allocator.js';
import { Pool } from '../../src/store/pool.js';
import { poolFiles } from '../../src/store/bottoms.js';
import { VdiskError } from '../../src/errors.js';
import { prng, tempDir, cleanupDirs } from './helpers.js';
import { afterAll } from 'vitest';

afterAll(cleanupDirs);

describe('Allocator', () => {
  it('allocates sequentially from 0 and counts used blocks', () => {
    const a = new Allocator(4096);
    expect([a.allocate(), a.allocate(), a.allocate()]).toEqual([0, 1, 2]);
    expect(a.used).toBe(3);
    expect(a.highWater).toBe(3);
    expect(a.isUsed(1)).toBe(true);
    expect(a.isUsed(3)).toBe(false);
    expect(a.isUsed(1_000_000)).toBe(false);
  });

  it('reuses the lowest freed block first', () => {
    const a = new Allocator(4096);
    for (let i = 0; i < 10; i++) a.allocate();
    a.free(7);
    a.free(3);
    a.free(5);
    expect(a.used).toBe(7);
    expect(a.allocate()).toBe(3);
    expect(a.allocate()).toBe(5);
    expect(a.allocate()).toBe(7);
    expect(a.allocate()).toBe(10);
    expect(a.used).toBe(11);
  });

  it('cursor: allocation continues after the last allocated block, a free below pulls it back', () => {
    const a = new Allocator(4096);
    for (let i = 0; i < 20; i++) a.allocate();
    a.free(15);
    a.free(16);
    expect(a.allocate()).toBe(15);
    a.free(2);
    expect(a.allocate()).toBe(2);
    expect(a.allocate()).toBe(16);
    expect(a.allocate()).toBe(20);
  });

  it('mark returns false on a double mark and fills holes for later allocation', () => {
    const a = new Allocator(4096);
    expect(a.mark(5)).toBe(true);
    expect(a.mark(5)).toBe(false);
    expect(a.mark(2)).toBe(true);
    expect(a.used).toBe(2);
    expect(a.highWater).toBe(6);
    expect([a.allocate(), a.allocate(), a.allocate(), a.allocate(), a.allocate()]).toEqual([0, 1, 3, 4, 6]);
    expect(a.used).toBe(7);
  });

  it('grows the bitmap for high pbns (beyond the initial 8192)', () => {
    const a = new Allocator(65536);
    expect(a.mark(100_000)).toBe(true);
    expect(a.isUsed(100_000)).toBe(true);
    expect(a.mark(100_000)).toBe(false);
    expect(a.highWater).toBe(100_001);
    expect(a.allocate()).toBe(0);
    a.free(100_000);
    expect(a.used).toBe(1);
    for (let i = 0; i < 9000; i++) a.allocate();
    expect(a.used).toBe(9001);
    expect(a.isUsed(8999)).toBe(true);
  });

  it('usedEnd is one past the highest pbn in use, falling as the top blocks are freed', () => {
    const a = new Allocator(4096);
    expect(a.usedEnd()).toBe(0);
    for (let i = 0; i < 20; i++) a.allocate();
    expect(a.usedEnd()).toBe(20);
    a.free(19);
    a.free(17);
    expect(a.usedEnd()).toBe(19);
    a.free(18);
    expect(a.usedEnd()).toBe(17);
    for (let i = 0; i < 17; i++) a.free(i);
    expect(a.usedEnd()).toBe(0);
    expect(a.mark(70_001)).toBe(true);
    expect(a.usedEnd()).toBe(70_002);
  });

  it('double free throws', () => {
    const a = new Allocator(4096);
    const p = a.allocate();
    a.free(p);
    expect(() => a.free(p)).toThrow(/double free/);
    expect(() => a.free(123456)).toThrow(/double free/);
    expect(a.used).toBe(0);
  });

  it('random allocate/free never hands out a used block and always picks the lowest free (seeded)', () => {
    const seed = 4242;
    const rnd = prng(seed);
    const a = new Allocator(4096);
    const used = new Set<number>();
    for (let i = 0; i < 5000; i++) {
      if (used.size === 0 || rnd() < 0.6) {
        const p = a.allocate();
        let lowest = 0;
        while (used.has(lowest)) lowest++;
        expect(p, `seed ${seed} step ${i}`).toBe(lowest);
        used.add(p);
      } else {
        const arr = [...used];
        const p = arr[Math.floor(rnd() * arr.length)]!;
        a.free(p);
        used.delete(p);
      }
      expect(a.used, `seed ${seed} step ${i}`).toBe(used.size);
    }
  });
});

describe('Pool', () => {
  it('counts bytes across block sizes and refuses allocation past capacity with NO_SPACE', async () => {
    const dir = await tempDir();
    const pool = new Pool(poolFiles(dir), 3 * 4096 + 65536);
    pool.allocate(65536);
    pool.allocate(4096);
    pool.allocate(4096);
    expect(pool.usedBytes()).toBe(65536 + 8192);
    expect(pool.usedBlocks(4096)).toBe(2);
    expect(pool.usedBlocks(65536)).toBe(1);
    expect(pool.usedBlocks(8192)).toBe(0);
    let err: unknown;
    try {
      pool.allocate(65536);
    } catch (e) {
      err = e;
    }
    expect((err as VdiskError).code).toBe('NO_SPACE');
    expect(pool.usedBytes()).toBe(65536 + 8192);
    pool.allocate(4096);
    expect(() => pool.allocate(4096)).toThrow(VdiskError);
    pool.free(65536, 0);
    expect(pool.usedBytes()).toBe(3 * 4096);
    expect(pool.allocate(65536)).toBe(0);
    await pool.close();
  });

  it('stores and reads blocks, including sub-ranges, and reads unwritten space as zeros', async () => {
    const dir = await tempDir();
    const pool = new Pool(poolFiles(dir), Infinity);
    const s = await pool.store(4096);
    expect(await pool.store(4096)).toBe(s);
    const data = Buffer.alloc(4096, 0xab);
    await s.write(3, data);
    await s.write(3, Buffer.from('hello'), 100);
    const out = Buffer.alloc(4096);
    await s.read(3, out);
    expect(out.subarray(100, 105).toString()).toBe('hello');
    expect(out[99]).toBe(0xab);
    const part = Buffer.alloc(5);
    await s.read(3, part, 100);
    expect(part.toString()).toBe('hello');
    const beyond = Buffer.alloc(4096, 1);
    await s.read(10, beyond);
    expect(beyond.every((b) => b === 0)).toBe(true);
    await pool.sync();
    await pool.close();
  });
});
