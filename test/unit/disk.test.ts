import { describe, it, expect, afterAll, vi } from 'vitest';
import { Registry } from '../../src/disk/registry.js';
import type { DiskState } from '../../src/disk/context.js';
import { writeDisk, readView, writeDiskNow, readViewNow } from '../../src/disk/io.js';
import { createSnapshot, deleteSnapshot, rollback, cloneSnapshot } from '../../src/disk/snapshots.js';
import { storeStatus, renderStatus } from '../../src/control/status.js';
import { runLine } from '../../src/control/commands.js';
import { MAX_VIRTUAL_SIZE } from '../../src/util/size.js';
import type { BlockStoreKind } from '../../src/meta/records.js';
import { prng, randomBytes, tempDir, cleanupDirs, expectCode } from './helpers.js';

afterAll(cleanupDirs);

const K = 1024;
const M = 1024 * 1024;
const TiB = 1024 ** 4;

async function freshStore(poolSize?: number, blockStore: BlockStoreKind = 'file'): Promise<{ dir: string; reg: Registry }> {
  const dir = await tempDir();
  const reg = await Registry.open({ dir, blockStore, ...(poolSize !== undefined ? { poolSize } : {}) });
  return { dir, reg };
}

const fresh = (poolSize?: number): Promise<{ dir: string; reg: Registry }> => freshStore(poolSize);

async function read(reg: Registry, d: DiskState, offset: number, length: number, snap = -1): Promise<Buffer> {
  const b = Buffer.alloc(length, 0xee);
  const n = await readView(reg.ctx, d, snap, offset, b);
  return b.subarray(0, n);
}

const zeros = (n: number) => Buffer.alloc(n);

describe('create / resize / delete validation', () => {
  it('rejects bad names, sizes and block sizes with INVALID', async () => {
    const { reg } = await fresh();
    for (const name of ['', '.hidden', 'a b', 'a/b', 'a@b', 'x'.repeat(101), 'tab\t', 'ü', '..', 'a\0b']) {
      await expectCode(reg.create(name, M, 4096), 'INVALID');
    }
    await reg.create('x'.repeat(100), M, 4096);
    await reg.create('a.b_c-9', M, 4096);
    await reg.create('-dash', M, 4096);
    for (const size of [0, -512, 1000, 511, 513, 1.5, NaN, Infinity, MAX_VIRTUAL_SIZE, MAX_VIRTUAL_SIZE + 512, 2 ** 60]) {
      await expectCode(reg.create('s', size, 4096), 'INVALID');
    }
    for (const bs of [0, 512, 3000, 4095, 2048, 12288, 2 * M, 4096.5]) {
      await expectCode(reg.create('b', M, bs), 'INVALID');
    }
    expect(reg.names()).toEqual(['-dash', 'a.b_c-9', 'x'.repeat(100)]);
    await reg.close();
  });

  it('accepts a 512-byte multiple that is not a block multiple, and the default block size is 64K', async () => {
    const { reg } = await fresh();
    await reg.create('odd', 4096 * 3 + 512, 4096);
    const rec = await reg.create('dflt', M);
    expect(rec.blockSize).toBe(64 * K);
    const d = reg.disk('odd');
    const data = randomBytes(prng(1), 512);
    await writeDisk(reg.ctx, d, 4096 * 3, data);
    expect(await read(reg, d, 4096 * 3, 4096)).toEqual(data); // short read at the end
    await expectCode(writeDisk(reg.ctx, d, 4096 * 3 + 1, data), 'INVALID');
    await reg.close();
  });

  it('refuses duplicates (EXISTS) and unknown disks (NOT_FOUND)', async () => {
    const { reg } = await fresh();
    await reg.create('d', M, 4096);
    await expectCode(reg.create('d', 2 * M, 4096), 'EXISTS');
    await expectCode(async () => reg.disk('nope'), 'NOT_FOUND');
    await expectCode(reg.delete('nope'), 'NOT_FOUND');
    await expectCode(reg.resize('nope', M), 'NOT_FOUND');
    await expectCode(createSnapshot(reg.ctx, reg.disk('d'), 'bad name'), 'INVALID');
    await expectCode(deleteSnapshot(reg.ctx, reg.disk('d'), 'nope'), 'NOT_FOUND');
    await expectCode(rollback(reg.ctx, reg.disk('d'), 'nope'), 'NOT_FOUND');
    await expectCode(cloneSnapshot(reg.ctx, reg.disk('d'), 'nope', 'c'), 'NOT_FOUND');
    await createSnapshot(reg.ctx, reg.disk('d'), 's');
    await expectCode(createSnapshot(reg.ctx, reg.disk('d'), 's'), 'EXISTS');
    await expectCode(cloneSnapshot(reg.ctx, reg.disk('d'), 's', 'd'), 'EXISTS');
    await expectCode(cloneSnapshot(reg.ctx, reg.disk('d'), 's', '.bad'), 'INVALID');
    await reg.close();
  });

  it('resize validates sizes; shrinking or rolling back or deleting an open disk is BUSY, growing is allowed', async () => {
    const { reg } = await fresh();
    await reg.create('d', M, 4096);
    const d = reg.disk('d');
    for (const s of [0, 1000, -4096, MAX_VIRTUAL_SIZE]) await expectCode(reg.resize('d', s), 'INVALID');
    await createSnapshot(reg.ctx, d, 's');
    d.openCount = 1;
    await expectCode(reg.resize('d', M / 2), 'BUSY');
    await expectCode(rollback(reg.ctx, d, 's'), 'BUSY');
    await expectCode(reg.delete('d', { recursive: true }), 'BUSY');
    await reg.resize('d', 2 * M);
    expect(d.rec.size).toBe(2 * M);
    d.openCount = 0;
    d.snapOpen.set(d.rec.snapshots[0]!.id, 1);
    await expectCode(deleteSnapshot(reg.ctx, d, 's'), 'BUSY');
    await expectCode(reg.delete('d', { recursive: true }), 'BUSY');
    d.snapOpen.clear();
    await expectCode(reg.delete('d'), 'BUSY'); // has snapshots, no -r
    await reg.delete('d', { recursive: true });
    expect(reg.names()).toEqual([]);
    await reg.close();
  });

  it('a 16 TiB disk is accepted and thin: writing 3 blocks uses 3 blocks', async () => {
    const { reg } = await fresh();
    await reg.create('big', 16 * TiB, 65536);
    const d = reg.disk('big');
    expect(reg.ctx.pool.usedBytes()).toBe(0);
    const rnd = prng(16);
    const a = randomBytes(rnd, 65536);
    const b = randomBytes(rnd, 100);
    const c = randomBytes(rnd, 70000);
    await writeDisk(reg.ctx, d, 0, a);
    await writeDisk(reg.ctx, d, 8 * TiB + 5, b);
    await writeDisk(reg.ctx, d, 16 * TiB - 65536, c.subarray(0, 65536));
    expect(d.allocated).toBe(3);
    expect(reg.ctx.pool.usedBytes()).toBe(3 * 65536);
    expect(await read(reg, d, 0, 65536)).toEqual(a);
    expect(await read(reg, d, 8 * TiB + 5, 100)).toEqual(b);
    expect(await read(reg, d, 8 * TiB, 5)).toEqual(zeros(5));
    expect(await read(reg, d, 16 * TiB - 65536, 70000)).toEqual(c.subarray(0, 65536)); // short at the end
    expect(await read(reg, d, 16 * TiB, 10)).toEqual(Buffer.alloc(0));
    expect(await read(reg, d, 4 * TiB, 4096)).toEqual(zeros(4096));
    await expectCode(writeDisk(reg.ctx, d, 16 * TiB - 10, Buffer.alloc(11, 1)), 'INVALID');
    await expectCode(writeDisk(reg.ctx, d, -1, Buffer.alloc(1, 1)), 'INVALID');
    const st = storeStatus(reg);
    expect(st.disks[0]).toMatchObject({ name: 'big', size: 16 * TiB, blockSize: 65536, allocatedBytes: 3 * 65536 });
    expect(st.pool).toEqual({ capacity: null, usedBytes: 3 * 65536, freeBytes: null, blockStore: 'file' });
    expect(renderStatus(st)).toContain('16T');
    await reg.close();
  });

  it('the largest accepted size (8P - 512) is usable at its last bytes', async () => {
    const { reg } = await fresh();
    const size = MAX_VIRTUAL_SIZE - 512;
    await reg.create('huge', size, 4096);
    const d = reg.disk('huge');
    const data = randomBytes(prng(8), 512 + 4096);
    await writeDisk(reg.ctx, d, size - data.length, data);
    expect(await read(reg, d, size - data.length, 10000)).toEqual(data);
    expect(d.allocated).toBe(2);
    await reg.close();
    const reg2 = await Registry.open({ dir: (reg as unknown as { dir: string }).dir });
    const d2 = reg2.disk('huge');
    expect(d2.allocated).toBe(2);
    expect(await read(reg2, d2, size - data.length, 10000)).toEqual(data);
    await reg2.close();
  });
});

// The block I/O tests run against both bottoms: pool files and block data inside LevelDB.
describe.each(['file', 'leveldb'] as const)('block store %s', (bottom) => {
  const fresh = (poolSize?: number): Promise<{ dir: string; reg: Registry }> => freshStore(poolSize, bottom);

  describe('read / write', () => {
    it('round-trips writes at odd offsets and lengths against a reference buffer (seeded)', async () => {
      const seed = 777;
      const rnd = prng(seed);
      const { reg } = await fresh();
      for (const [name, size, bs] of [['a', 256 * K, 4096], ['b', M, 65536], ['c', 300 * 512, 8192]] as const) {
        await reg.create(name, size, bs);
        const d = reg.disk(name);
        const ref = Buffer.alloc(size);
        for (let i = 0; i < 60; i++) {
          const off = Math.floor(rnd() * size);
          const len = Math.min(size - off, 1 + Math.floor(rnd() * bs * 3));
          const buf = rnd() < 0.2 ? Buffer.alloc(len) : randomBytes(rnd, len);
          await writeDisk(reg.ctx, d, off, buf);
          buf.copy(ref, off);
          const roff = Math.floor(rnd() * size);
          const rlen = 1 + Math.floor(rnd() * bs * 3);
          const got = await read(reg, d, roff, rlen);
          expect(got.equals(ref.subarray(roff, Math.min(size, roff + rlen))), `seed ${seed} disk ${name} step ${i}`).toBe(true);
        }
        expect((await read(reg, d, 0, size)).equals(ref), `seed ${seed} disk ${name} full`).toBe(true);
        let nonZero = 0;
        for (let lbn = 0; lbn * bs < size; lbn++) if (!ref.subarray(lbn * bs, (lbn + 1) * bs).every((x) => x === 0)) nonZero++;
        expect(d.allocated, `seed ${seed} disk ${name}`).toBeGreaterThanOrEqual(nonZero);
      }
      await reg.close();
    });

    // Fixed bug, kept as a regression test (minor): readView does not validate its offset like writeDisk does: a negative offset reads
    // "before the disk" as zeros and returns a full count, a fractional one escapes as Node's
    // ERR_OUT_OF_RANGE instead of a VdiskError (errors.ts: "the core throws only these").
    it('readView refuses a negative or fractional offset with INVALID', async () => {
      const { reg } = await fresh();
      await reg.create('d', 64 * K, 4096);
      const d = reg.disk('d');
      await writeDisk(reg.ctx, d, 0, Buffer.alloc(4096, 1));
      await expectCode(readView(reg.ctx, d, -1, -8, Buffer.alloc(16)), 'INVALID'); // returned 16 before the fix
      await expectCode(readView(reg.ctx, d, -1, 1.5, Buffer.alloc(16)), 'INVALID'); // ERR_OUT_OF_RANGE before the fix
      await reg.close();
    });

    it('a zero-length write and a read at or past the end do nothing', async () => {
      const { reg } = await fresh();
      await reg.create('d', 64 * K, 4096);
      const d = reg.disk('d');
      expect(await writeDisk(reg.ctx, d, 64 * K, Buffer.alloc(0))).toBe(0);
      expect(await writeDisk(reg.ctx, d, 100, Buffer.alloc(0))).toBe(0);
      expect(await readView(reg.ctx, d, -1, 64 * K, Buffer.alloc(10))).toBe(0);
      expect(await readView(reg.ctx, d, -1, 64 * K + 4096, Buffer.alloc(10))).toBe(0);
      expect(d.allocated).toBe(0);
      await reg.close();
    });

    it('writing a whole zero block frees the block; zero writes to holes allocate nothing', async () => {
      const { reg } = await fresh();
      await reg.create('d', 64 * K, 4096);
      const d = reg.disk('d');
      await writeDisk(reg.ctx, d, 0, zeros(64 * K));
      expect(d.allocated).toBe(0);
      expect(reg.ctx.pool.usedBytes()).toBe(0);
      await writeDisk(reg.ctx, d, 4096, Buffer.alloc(3 * 4096, 7));
      expect(d.allocated).toBe(3);
      await writeDisk(reg.ctx, d, 4096 * 2, zeros(4096));
      expect(d.allocated).toBe(2);
      await reg.ctx.drain(); // plain writes commit asynchronously; the freed block is released after the commit
      expect(reg.ctx.pool.usedBytes()).toBe(2 * 4096);
      const got = await read(reg, d, 4096, 3 * 4096);
      expect(got.equals(Buffer.concat([Buffer.alloc(4096, 7), zeros(4096), Buffer.alloc(4096, 7)]))).toBe(true);
      // zeros spanning partial + whole blocks
      await writeDisk(reg.ctx, d, 4096 + 100, zeros(2 * 4096));
      expect(await read(reg, d, 4096, 100)).toEqual(Buffer.alloc(100, 7));
      expect(await read(reg, d, 4096 + 100, 2 * 4096)).toEqual(zeros(2 * 4096));
      expect(await read(reg, d, 3 * 4096 + 100, 4096 - 100)).toEqual(Buffer.alloc(4096 - 100, 7));
      await reg.close();
    });

    it('a partial zero write zeroes only its range', async () => {
      const { reg } = await fresh();
      await reg.create('d', 64 * K, 4096);
      const d = reg.disk('d');
      const data = randomBytes(prng(3), 4096);
      await writeDisk(reg.ctx, d, 8192, data);
      await writeDisk(reg.ctx, d, 8192 + 10, zeros(20));
      const want = Buffer.from(data);
      want.fill(0, 10, 30);
      expect(await read(reg, d, 8192, 4096)).toEqual(want);
      expect(d.allocated).toBe(1);
      // a partial zero write into a hole allocates nothing
      await writeDisk(reg.ctx, d, 100, zeros(50));
      expect(d.allocated).toBe(1);
      expect(reg.ctx.pool.usedBytes()).toBe(4096);
      await reg.close();
    });

    it('partial writes into a hole keep the rest of the block zero', async () => {
      const { reg } = await fresh();
      await reg.create('d', 64 * K, 65536);
      const d = reg.disk('d');
      await writeDisk(reg.ctx, d, 1000, Buffer.from('abc'));
      const got = await read(reg, d, 0, 64 * K);
      const want = zeros(64 * K);
      want.write('abc', 1000);
      expect(got.equals(want)).toBe(true);
      await reg.close();
    });
  });

  describe('resize', () => {
    it('shrink frees blocks past the end, zeroes the tail, and growing again reads zeros', async () => {
      const { reg } = await fresh();
      await reg.create('d', 64 * K, 4096);
      const d = reg.disk('d');
      const data = randomBytes(prng(5), 64 * K);
      await writeDisk(reg.ctx, d, 0, data);
      expect(d.allocated).toBe(16);
      await reg.resize('d', 5 * 4096 + 1024);
      expect(d.rec.size).toBe(5 * 4096 + 1024);
      expect(d.allocated).toBe(6);
      expect(reg.ctx.pool.usedBytes()).toBe(6 * 4096);
      expect(await read(reg, d, 0, 64 * K)).toEqual(data.subarray(0, 5 * 4096 + 1024));
      await expectCode(writeDisk(reg.ctx, d, 5 * 4096 + 1024, Buffer.alloc(1, 1)), 'INVALID');
      await reg.resize('d', 64 * K);
      const got = await read(reg, d, 0, 64 * K);
      expect(got.subarray(0, 5 * 4096 + 1024)).toEqual(data.subarray(0, 5 * 4096 + 1024));
      expect(got.subarray(5 * 4096 + 1024).equals(zeros(64 * K - 5 * 4096 - 1024))).toBe(true);
      expect(d.allocated).toBe(6);
      await reg.close();
    });

    it('shrink to a block boundary and to one sector', async () => {
      const { reg } = await fresh();
      await reg.create('d', 64 * K, 4096);
      const d = reg.disk('d');
      await writeDisk(reg.ctx, d, 0, Buffer.alloc(64 * K, 9));
      await reg.resize('d', 8192);
      expect(d.allocated).toBe(2);
      await reg.resize('d', 512);
      expect(d.allocated).toBe(1);
      await reg.resize('d', 8192);
      const got = await read(reg, d, 0, 8192);
      expect(got.subarray(0, 512)).toEqual(Buffer.alloc(512, 9));
      expect(got.subarray(512).equals(zeros(8192 - 512))).toBe(true);
      await reg.close();
    });

    it('shrink keeps the latest snapshot intact and rollback restores the old size and data', async () => {
      const { reg } = await fresh();
      await reg.create('d', 64 * K, 4096);
      const d = reg.disk('d');
      const data = randomBytes(prng(6), 64 * K);
      await writeDisk(reg.ctx, d, 0, data);
      await createSnapshot(reg.ctx, d, 's');
      await reg.resize('d', 3000 + 1096); // 4096: one block
      await reg.resize('d', 3 * 4096 + 512);
      expect(await read(reg, d, 0, 64 * K)).toEqual(Buffer.concat([data.subarray(0, 4096), zeros(2 * 4096 + 512)]));
      expect((await read(reg, d, 0, 64 * K, 0)).equals(data)).toBe(true);
      expect(reg.ctx.pool.usedBytes()).toBe(16 * 4096);
      await rollback(reg.ctx, d, 's');
      expect(d.rec.size).toBe(64 * K);
      expect((await read(reg, d, 0, 64 * K)).equals(data)).toBe(true);
      await reg.close();
    });
  });

  describe('pool full', () => {
    it('fails a write with NO_SPACE and changes nothing; in-place overwrites still work', async () => {
      const { reg } = await fresh(4 * 4096);
      await reg.create('d', 64 * K, 4096);
      const d = reg.disk('d');
      const rnd = prng(11);
      const first = randomBytes(rnd, 4 * 4096);
      await writeDisk(reg.ctx, d, 0, first);
      expect(reg.ctx.pool.usedBytes()).toBe(4 * 4096);
      // A write overlapping an allocated block (in place) and a hole (needs a new block) fails as a whole.
      const spanning = randomBytes(rnd, 2 * 4096);
      await expectCode(writeDisk(reg.ctx, d, 3 * 4096, spanning), 'NO_SPACE');
      await expectCode(writeDisk(reg.ctx, d, 10 * 4096, Buffer.alloc(1, 1)), 'NO_SPACE');
      expect((await read(reg, d, 0, 64 * K)).equals(Buffer.concat([first, zeros(64 * K - first.length)]))).toBe(true);
      expect(d.allocated).toBe(4);
      expect(reg.ctx.pool.usedBytes()).toBe(4 * 4096);
      // in place
      const over = randomBytes(rnd, 5000);
      await writeDisk(reg.ctx, d, 1000, over);
      over.copy(first, 1000);
      expect((await read(reg, d, 0, 4 * 4096)).equals(first)).toBe(true);
      // freeing a block makes room again (once its commit is through)
      await writeDisk(reg.ctx, d, 0, zeros(4096));
      await reg.ctx.drain();
      await writeDisk(reg.ctx, d, 10 * 4096, Buffer.alloc(4096, 3));
      expect(await read(reg, d, 10 * 4096, 4096)).toEqual(Buffer.alloc(4096, 3));
      await reg.ctx.drain();
      expect(reg.ctx.pool.usedBytes()).toBe(4 * 4096);
      await reg.close();
    });

    // Regression (broken by the group commit in 6e73131, fixed in 7ae2d1a): a plain write returns before its
    // batch commits and the blocks it stops referencing are freed only after that commit, so on a full pool
    // the space freed by a zero write (discard) was not available to the very next write (NO_SPACE).
    it('space freed by a zero write is reusable by the next write on a full pool', async () => {
      const { reg } = await fresh(4096);
      await reg.create('d', 64 * K, 4096);
      const d = reg.disk('d');
      await writeDisk(reg.ctx, d, 0, Buffer.alloc(4096, 7));
      await writeDisk(reg.ctx, d, 0, zeros(4096));
      expect(d.allocated).toBe(0);
      await writeDisk(reg.ctx, d, 8192, Buffer.alloc(4096, 1));
      expect(await read(reg, d, 8192, 4096)).toEqual(Buffer.alloc(4096, 1));
      await reg.close();
    });

    it('a copy-on-write overwrite after a snapshot needs space; NO_SPACE keeps both views intact', async () => {
      const { reg } = await fresh(2 * 4096);
      await reg.create('d', 64 * K, 4096);
      const d = reg.disk('d');
      await writeDisk(reg.ctx, d, 0, Buffer.alloc(2 * 4096, 1));
      await createSnapshot(reg.ctx, d, 's');
      await expectCode(writeDisk(reg.ctx, d, 10, Buffer.alloc(10, 2)), 'NO_SPACE');
      expect(await read(reg, d, 0, 8192)).toEqual(Buffer.alloc(8192, 1));
      expect(await read(reg, d, 0, 8192, 0)).toEqual(Buffer.alloc(8192, 1));
      // whole zero writes need no space even after a snapshot
      await writeDisk(reg.ctx, d, 0, zeros(4096));
      expect(await read(reg, d, 0, 4096)).toEqual(zeros(4096));
      expect(await read(reg, d, 0, 4096, 0)).toEqual(Buffer.alloc(4096, 1));
      expect(reg.ctx.pool.usedBytes()).toBe(2 * 4096);
      // rollback to the latest snapshot moves table entries only: it needs no space
      await rollback(reg.ctx, d, 's');
      expect(await read(reg, d, 0, 8192)).toEqual(Buffer.alloc(8192, 1));
      expect(d.rec.snapshots.length).toBe(1);
      expect(reg.ctx.pool.usedBytes()).toBe(2 * 4096);
      // an older snapshot kept below a newer one: that rollback copies the changed block, and has no room
      await writeDisk(reg.ctx, d, 0, zeros(4096));
      await expectCode(createSnapshot(reg.ctx, d, 't').then(() => rollback(reg.ctx, d, 's')), 'NO_SPACE');
      expect(await read(reg, d, 0, 4096)).toEqual(zeros(4096));
      expect(d.rec.snapshots.length).toBe(2);
      await deleteSnapshot(reg.ctx, d, 't');
      await deleteSnapshot(reg.ctx, d, 's');
      expect(reg.ctx.pool.usedBytes()).toBe(4096);
      await reg.close();
    });
  });

  describe('snapshots, clones, rollback (basic)', () => {
    it('snapshot is instant and keeps its content; clone reads through; rollback restores', async () => {
      const { reg } = await fresh();
      await reg.create('d', 64 * K, 4096);
      const d = reg.disk('d');
      const rnd = prng(21);
      const v1 = randomBytes(rnd, 64 * K);
      await writeDisk(reg.ctx, d, 0, v1);
      const used = reg.ctx.pool.usedBytes();
      await createSnapshot(reg.ctx, d, 's1');
      expect(reg.ctx.pool.usedBytes()).toBe(used);
      const patch = randomBytes(rnd, 5000);
      await writeDisk(reg.ctx, d, 3000, patch);
      const v2 = Buffer.from(v1);
      patch.copy(v2, 3000);
      expect((await read(reg, d, 0, 64 * K)).equals(v2)).toBe(true);
      expect((await read(reg, d, 0, 64 * K, 0)).equals(v1)).toBe(true);
      expect(d.held.get(d.rec.snapshots[0]!.id)).toBe(2); // [3000, 8000) touches blocks 0 and 1
      await cloneSnapshot(reg.ctx, d, 's1', 'c');
      const c = reg.disk('c');
      expect((await read(reg, c, 0, 64 * K)).equals(v1)).toBe(true);
      expect(c.allocated).toBe(0);
      await writeDisk(reg.ctx, c, 0, zeros(4096));
      expect(await read(reg, c, 0, 4096)).toEqual(zeros(4096));
      expect(await read(reg, d, 0, 4096, 0)).toEqual(v1.subarray(0, 4096));
      await expectCode(deleteSnapshot(reg.ctx, d, 's1'), 'BUSY');
      await expectCode(reg.delete('d', { recursive: true }), 'BUSY');
      await rollback(reg.ctx, d, 's1');
      expect((await read(reg, d, 0, 64 * K)).equals(v1)).toBe(true);
      await reg.delete('c');
      await deleteSnapshot(reg.ctx, d, 's1');
      await reg.ctx.drain();
      expect(reg.ctx.pool.usedBytes()).toBe(d.allocated * 4096);
      expect(d.allocated).toBe(16);
      await reg.close();
    });
  });

  describe('table cache', () => {
    // Fixed bug, kept as a regression test: commitChanges stages the preserved entry of a hole as `preservedOf(c)` = a *new* {kind:'inherit'}
    // object, and after the commit calls snapTable.committed(lbn, preservedOf(c)) with another new object;
    // Table.committed compares with `===`, so the staged entry is never taken out of `pending` (which is
    // never evicted). Every hole first written after a snapshot leaks one pending entry for as long as the
    // snapshot lives: filling a fresh 500G disk (64K blocks) after a snapshot leaves ~8M entries in memory.
    it('committed changes leave no pending entries behind (white-box)', async () => {
      const { reg } = await fresh();
      await reg.create('d', 256 * K, 4096);
      const d = reg.disk('d');
      await writeDisk(reg.ctx, d, 0, Buffer.alloc(8 * 4096, 1));
      await createSnapshot(reg.ctx, d, 's');
      await writeDisk(reg.ctx, d, 0, Buffer.alloc(64 * 4096, 2)); // 8 preserved data blocks, 56 preserved holes
      await reg.ctx.drain();
      const pending = (t: unknown) => (t as { pending: Map<number, unknown> }).pending.size;
      expect(pending(d.live)).toBe(0);
      expect(pending(d.snapTable(d.rec.snapshots[0]!.id))).toBe(0); // 56 before the fix
      await reg.close();
    });
  });

  describe('clones of clones, shrink and rollback', () => {
    it('shrinking a clone of a clone keeps its snapshot, growing reads zeros, rollback restores (across reopen)', async () => {
      const { dir, reg } = await fresh();
      await reg.create('d', 64 * K, 4096);
      const rnd = prng(44);
      const base = randomBytes(rnd, 64 * K);
      await writeDisk(reg.ctx, reg.disk('d'), 0, base);
      await createSnapshot(reg.ctx, reg.disk('d'), 's');
      await cloneSnapshot(reg.ctx, reg.disk('d'), 's', 'c1');
      const b3 = randomBytes(rnd, 4096);
      await writeDisk(reg.ctx, reg.disk('c1'), 3 * 4096, b3);
      await writeDisk(reg.ctx, reg.disk('c1'), 9 * 4096, zeros(4096));
      await createSnapshot(reg.ctx, reg.disk('c1'), 't');
      await cloneSnapshot(reg.ctx, reg.disk('c1'), 't', 'c2');
      await writeDisk(reg.ctx, reg.disk('d'), 0, Buffer.alloc(64 * K, 0x11)); // the origin moves on
      const want = Buffer.from(base);
      b3.copy(want, 3 * 4096);
      want.fill(0, 9 * 4096, 10 * 4096);
      const c2 = reg.disk('c2');
      expect((await read(reg, c2, 0, 64 * K)).equals(want)).toBe(true);
      await writeDisk(reg.ctx, c2, 12 * 4096 + 5, Buffer.from('tail'));
      want.write('tail', 12 * 4096 + 5);
      await createSnapshot(reg.ctx, c2, 'u');
      await reg.resize('c2', 4 * 4096 + 512);
      expect((await read(reg, c2, 0, 64 * K, 0)).equals(want)).toBe(true);
      await reg.resize('c2', 64 * K);
      const shrunk = Buffer.alloc(64 * K);
      want.copy(shrunk, 0, 0, 4 * 4096 + 512);
      expect((await read(reg, c2, 0, 64 * K)).equals(shrunk)).toBe(true);
      expect((await read(reg, c2, 0, 64 * K, 0)).equals(want)).toBe(true);
      await createSnapshot(reg.ctx, c2, 'v');
      await reg.close();

      const reg2 = await Registry.open({ dir });
      const c2b = reg2.disk('c2');
      expect((await read(reg2, c2b, 0, 64 * K, 0)).equals(want)).toBe(true);
      expect((await read(reg2, c2b, 0, 64 * K, 1)).equals(shrunk)).toBe(true);
      await rollback(reg2.ctx, c2b, 'u');
      expect((await read(reg2, c2b, 0, 64 * K)).equals(want)).toBe(true);
      await rollback(reg2.ctx, c2b, 'v');
      expect((await read(reg2, c2b, 0, 64 * K)).equals(shrunk)).toBe(true);
      await deleteSnapshot(reg2.ctx, c2b, 'u');
      expect((await read(reg2, c2b, 0, 64 * K, 0)).equals(shrunk)).toBe(true);
      await rollback(reg2.ctx, c2b, 'v');
      await reg2.ctx.drain();
      let sum = 0;
      for (const n of reg2.names()) {
        const x = reg2.disk(n);
        sum += (x.allocated + [...x.held.values()].reduce((a, b) => a + b, 0)) * 4096;
      }
      expect(reg2.ctx.pool.usedBytes()).toBe(sum);
      await reg2.close();
    });
  });
});

describe('persistence', () => {
  it('keeps data, snapshots, allocated counts and pool usage across close/reopen', async () => {
    const { dir, reg } = await fresh();
    await reg.create('d', 256 * K, 4096);
    await reg.create('e', M, 65536);
    const d = reg.disk('d');
    const rnd = prng(31);
    const a = randomBytes(rnd, 10000);
    await writeDisk(reg.ctx, d, 777, a);
    await createSnapshot(reg.ctx, d, 's');
    await writeDisk(reg.ctx, d, 4096, Buffer.alloc(4096, 5));
    await writeDisk(reg.ctx, reg.disk('e'), 65536 * 3, Buffer.alloc(100, 6));
    await cloneSnapshot(reg.ctx, d, 's', 'c');
    await writeDisk(reg.ctx, reg.disk('c'), 0, Buffer.alloc(10, 8));
    const before = storeStatus(reg);
    const liveD = await read(reg, d, 0, 256 * K);
    const snapD = await read(reg, d, 0, 256 * K, 0);
    const liveC = await read(reg, reg.disk('c'), 0, 256 * K);
    await reg.close();

    const reg2 = await Registry.open({ dir });
    expect(reg2.scan.doubleRefs).toEqual([]);
    expect(reg2.scan.orphanTables.size).toBe(0);
    // The same, but for what the reopened store has in its table cache.
    expect({ ...storeStatus(reg2), tableCache: undefined }).toEqual({ ...before, tableCache: undefined });
    const d2 = reg2.disk('d');
    expect((await read(reg2, d2, 0, 256 * K)).equals(liveD)).toBe(true);
    expect((await read(reg2, d2, 0, 256 * K, 0)).equals(snapD)).toBe(true);
    expect((await read(reg2, reg2.disk('c'), 0, 256 * K)).equals(liveC)).toBe(true);
    expect(await read(reg2, reg2.disk('e'), 65536 * 3, 100)).toEqual(Buffer.alloc(100, 6));
    // new allocations after reopen do not collide with existing blocks
    await writeDisk(reg2.ctx, d2, 100 * 1024, Buffer.alloc(4096, 0x77));
    expect((await read(reg2, d2, 0, 100 * 1024)).equals(liveD.subarray(0, 100 * 1024))).toBe(true);
    expect((await read(reg2, d2, 0, 256 * K, 0)).equals(snapD)).toBe(true);
    // deleted disks stay deleted and their space is free
    await reg2.delete('c');
    await reg2.delete('e');
    await reg2.close();
    const reg3 = await Registry.open({ dir });
    expect(reg3.names()).toEqual(['d']);
    const d3 = reg3.disk('d');
    expect(reg3.ctx.pool.usedBytes()).toBe((d3.allocated + (d3.held.get(d3.rec.snapshots[0]!.id) ?? 0)) * 4096);
    await reg3.close();
  });

  it('a second Registry.open on the same directory fails with LOCKED', async () => {
    const { dir, reg } = await fresh();
    await expectCode(Registry.open({ dir }), 'LOCKED');
    await reg.close();
    const again = await Registry.open({ dir });
    await again.close();
  });

  it('refuses a store with an unknown format version or an unreadable format record (CORRUPT)', async () => {
    const { Level } = await import('level');
    const { join } = await import('node:path');
    for (const value of [JSON.stringify({ magic: 'vdiskfs-store', version: 99 }), JSON.stringify({ magic: 'other', version: 1 }), '{not json']) {
      const { dir, reg } = await fresh();
      await reg.create('d', M, 4096);
      await reg.close();
      const db = new Level<string, string>(join(dir, 'db'), { keyEncoding: 'utf8', valueEncoding: 'utf8' });
      await db.put('meta!format', value);
      await db.close();
      await expectCode(Registry.open({ dir }), 'CORRUPT');
      // the refused open released the database: fixing the record makes the store usable again
      const db2 = new Level<string, string>(join(dir, 'db'), { keyEncoding: 'utf8', valueEncoding: 'utf8' });
      await db2.put('meta!format', JSON.stringify({ magic: 'vdiskfs-store', version: 1 }));
      await db2.close();
      const ok = await Registry.open({ dir });
      expect(ok.names()).toEqual(['d']);
      await ok.close();
    }
  });

  it('records history in order and keeps it across reopen', async () => {
    const { dir, reg } = await fresh();
    await reg.recordHistory('create a 1M', 'ok', 'created a');
    await reg.recordHistory('delete b', 'error', 'disk b not found', 'NOT_FOUND');
    let h = await reg.history();
    expect(h.map((x) => [x.command, x.result])).toEqual([['create a 1M', 'ok'], ['delete b', 'error']]);
    expect(h[1]).toMatchObject({ message: 'disk b not found', code: 'NOT_FOUND' });
    await reg.close();
    const reg2 = await Registry.open({ dir });
    await reg2.recordHistory('third', 'ok');
    h = await reg2.history();
    expect(h.map((x) => x.command)).toEqual(['create a 1M', 'delete b', 'third']);
    expect((await reg2.history(2)).map((x) => x.command)).toEqual(['delete b', 'third']);
    await reg2.close();
  });

  it('a snapshot command writes its history line in its own synced batch: one LevelDB write, not two', async () => {
    const { dir, reg } = await fresh();
    await runLine(reg, 'create d 1M');
    const batch = vi.spyOn(reg.ctx.db, 'batch');
    const put = vi.spyOn(reg.ctx.db, 'put');
    const msg = await runLine(reg, 'snapshot d s1');
    expect(batch.mock.calls.length + put.mock.calls.length).toBe(1);
    expect(batch.mock.calls[0]![1]).toEqual({ sync: true });
    batch.mockRestore();
    put.mockRestore();
    // a failed snapshot still leaves its error line (a batch of its own)
    await expectCode(runLine(reg, 'snapshot d s1'), 'EXISTS');
    await reg.close();
    const reg2 = await Registry.open({ dir });
    const h = await reg2.history();
    expect(h.map((x) => [x.command, x.result])).toEqual([['create d 1M', 'ok'], ['snapshot d s1', 'ok'], ['snapshot d s1', 'error']]);
    expect(h[1]!.message).toBe(msg);
    expect(reg2.disk('d').rec.snapshots.map((s) => s.name)).toEqual(['s1']);
    // the sequence kept both numbers: the next line and the next snapshot do not reuse them
    await runLine(reg2, 'snapshot d s2');
    expect((await reg2.history()).map((x) => x.command)).toEqual(['create d 1M', 'snapshot d s1', 'snapshot d s1', 'snapshot d s2']);
    expect(new Set(reg2.disk('d').rec.snapshots.map((s) => s.id)).size).toBe(2);
    await reg2.close();
  });
});

describe('synchronous fast paths (readViewNow / writeDiskNow)', () => {
  it('serve cached, unlocked blocks (writes behind) and decline when a block is locked, the gate is closed or an entry is not cached', async () => {
    const { reg } = await fresh();
    await reg.create('f', 4 * M, 64 * K);
    const d = reg.disk('f');
    const ctx = reg.ctx;
    const data = randomBytes(prng(7), 128 * K);
    // A brand-new disk: the entries of block 0 and 1 are not in memory yet (nothing read or written).
    expect(writeDiskNow(ctx, d, 0, data)).toBeUndefined();
    await writeDisk(ctx, d, 0, data); // the async path reads a run of entries into the cache
    // Now whole-block writes and reads go without an await, and match.
    const again = randomBytes(prng(8), 128 * K);
    expect(writeDiskNow(ctx, d, 0, again)).toBe(128 * K);
    again.fill(0x33, 0, 10); // the caller's buffer is free once the call returns (the store copied it)
    const b = Buffer.alloc(128 * K);
    // Written behind: until the write is in the file, the fast read declines and the async read waits for it.
    expect(readViewNow(ctx, d, -1, 0, b)).toBeUndefined();
    await readView(ctx, d, -1, 0, b);
    expect(b.subarray(10).equals(again.subarray(10))).toBe(true);
    expect(b.subarray(0, 10).equals(Buffer.alloc(10, 0x33))).toBe(false);
    b.copy(again); // what the disk holds
    // That read started readahead; while a chunk holding these blocks is being read, the fast read declines
    // (the async read waits for the chunk instead of reading the blocks twice). Let it arrive.
    await new Promise((r) => setTimeout(r, 100));
    expect(readViewNow(ctx, d, -1, 0, b)).toBe(128 * K);
    expect(b.equals(again)).toBe(true);
    // A hole next to it reads as zeros from memory too (the prefetch cached "no entry").
    const hole = Buffer.alloc(64 * K, 0xee);
    expect(readViewNow(ctx, d, -1, 2 * 64 * K, hole)).toBe(64 * K);
    expect(hole.equals(Buffer.alloc(64 * K))).toBe(true);
    // A partial write into a hole merges with zeros without an await (a new block, written behind).
    expect(writeDiskNow(ctx, d, 3 * 64 * K + 10, Buffer.alloc(100, 1))).toBe(100);
    const merged = await read(reg, d, 3 * 64 * K, 64 * K);
    expect(merged.equals(Buffer.concat([Buffer.alloc(10), Buffer.alloc(100, 1), Buffer.alloc(64 * K - 110)]))).toBe(true);
    // Declines: zeros (may free a block), a locked block, a closed gate.
    expect(writeDiskNow(ctx, d, 0, Buffer.alloc(64 * K))).toBeUndefined();
    const release = await d.lock.acquire(1);
    expect(writeDiskNow(ctx, d, 64 * K, again.subarray(0, 64 * K))).toBeUndefined();
    expect(readViewNow(ctx, d, -1, 64 * K, b)).toBeUndefined();
    release();
    let inside!: () => void;
    const held = d.gate.exclusively(() => new Promise<void>((r) => (inside = r)));
    await new Promise((r) => setTimeout(r, 0));
    expect(readViewNow(ctx, d, -1, 0, b)).toBeUndefined();
    expect(writeDiskNow(ctx, d, 0, again)).toBeUndefined();
    inside();
    await held;
    // In-place overwrites after a snapshot must preserve: the fast path redirects and the snapshot keeps the old data.
    await createSnapshot(ctx, d, 's');
    const third = randomBytes(prng(9), 128 * K);
    const n = writeDiskNow(ctx, d, 0, third) ?? (await writeDisk(ctx, d, 0, third));
    expect(n).toBe(128 * K);
    expect((await read(reg, d, 0, 128 * K)).equals(third)).toBe(true);
    expect((await read(reg, d, 0, 128 * K, 0)).equals(again)).toBe(true);
    await reg.close();
  });

  it('a partial write into a block a snapshot holds copies the block once, without an await; the snapshot keeps the old content', async () => {
    const { dir, reg } = await fresh();
    await reg.create('p', 4 * M, 64 * K);
    const d = reg.disk('p');
    const ctx = reg.ctx;
    const base = randomBytes(prng(21), 4 * 64 * K);
    await writeDisk(ctx, d, 0, base);
    await reg.sync(); // the blocks' writes are in the file: nothing busy
    await createSnapshot(ctx, d, 's1');
    const expectLive = Buffer.from(base);
    // 8 KiB "pages" at odd places in blocks 0..3, one spanning blocks 1 and 2.
    const writes: [number, Buffer][] = [
      [8 * K, randomBytes(prng(22), 8 * K)],
      [2 * 64 * K - 4 * K, randomBytes(prng(23), 8 * K)],
      [3 * 64 * K + 56 * K, randomBytes(prng(24), 8 * K)],
    ];
    const used = (): number => {
      const a = ctx.pool.allocator(64 * K);
      let n = 0;
      for (let pbn = 0; pbn < a.usedEnd(); pbn++) if (a.isUsed(pbn)) n++;
      return n;
    };
    const usedBefore = used();
    for (const [at, data] of writes) {
      expect(writeDiskNow(ctx, d, at, data)).toBe(data.length);
      data.copy(expectLive, at);
      data.fill(0x5a); // the caller's buffer is free once the call returns
    }
    // A second page into a block this write already copied lands in place: no further block.
    const more = randomBytes(prng(25), 8 * K);
    const inPlaceAt = 3 * 64 * K + 8 * K;
    expect(writeDiskNow(ctx, d, inPlaceAt, more) ?? (await writeDisk(ctx, d, inPlaceAt, more))).toBe(8 * K);
    more.copy(expectLive, inPlaceAt);
    await ctx.drain();
    expect(used() - usedBefore).toBe(4); // blocks 0, 1, 2, 3 copied once each
    expect((await read(reg, d, 0, 4 * 64 * K)).equals(expectLive)).toBe(true);
    expect((await read(reg, d, 0, 4 * 64 * K, 0)).equals(base)).toBe(true);
    // Durable and exact after a reopen.
    await reg.sync();
    await reg.close();
    const again = await Registry.open({ dir });
    expect((await read(again, again.disk('p'), 0, 4 * 64 * K)).equals(expectLive)).toBe(true);
    expect((await read(again, again.disk('p'), 0, 4 * 64 * K, 0)).equals(base)).toBe(true);
    await again.close();
  });

  it('a partial write into a clone\'s hole declines (its old content is the backing\'s, read asynchronously)', async () => {
    const { reg } = await fresh();
    await reg.create('o', 1 * M, 64 * K);
    const o = reg.disk('o');
    const base = randomBytes(prng(31), 64 * K);
    await writeDisk(reg.ctx, o, 0, base);
    await createSnapshot(reg.ctx, o, 's');
    await cloneSnapshot(reg.ctx, o, 's', 'c');
    const c = reg.disk('c');
    await read(reg, c, 64 * K, 64 * K); // entries of the clone cached
    await read(reg, c, 0, 64 * K);
    expect(writeDiskNow(reg.ctx, c, 100, Buffer.alloc(10, 7))).toBeUndefined();
    await writeDisk(reg.ctx, c, 100, Buffer.alloc(10, 7));
    const want = Buffer.from(base);
    want.fill(7, 100, 110);
    expect((await read(reg, c, 0, 64 * K)).equals(want)).toBe(true);
    await reg.close();
  });
});

describe('table prefetch', () => {
  it('a read that misses on many blocks at once reads their entries with one LevelDB iterator', async () => {
    const { dir, reg } = await fresh();
    await reg.create('f4', 4 * M, 4 * K);
    const data = randomBytes(prng(11), 64 * K);
    await writeDisk(reg.ctx, reg.disk('f4'), 8 * K, data);
    await reg.close();
    const again = await Registry.open({ dir });
    const iterator = vi.spyOn(again.ctx.db, 'iterator');
    const b = Buffer.alloc(64 * K);
    await readView(again.ctx, again.disk('f4'), -1, 8 * K, b); // 16 blocks, none cached after the reopen
    expect(b.equals(data)).toBe(true);
    expect(iterator).toHaveBeenCalledTimes(1);
    await again.close();
  });

  // meta/table.ts found(): without the read-ahead, a sequential stream missed every PREFETCH (256) blocks and
  // took the slow path there.
  it('a sequential reader finds the entries ahead of it in memory; a random one does not fetch ahead', async () => {
    const { dir, reg } = await fresh();
    await reg.create('seq', 4 * M, 4 * K); // 1,024 blocks of 4 KiB
    const data = randomBytes(prng(12), 2 * M);
    await writeDisk(reg.ctx, reg.disk('seq'), 0, data);
    await reg.close();
    const again = await Registry.open({ dir });
    const d = again.disk('seq');
    const iterator = vi.spyOn(again.ctx.db, 'iterator');
    const b = Buffer.alloc(64 * K);
    // Random: a miss that does not follow the block before it reads a short run (blocks 0..15), and a hit on
    // block 8 that does not follow the block before it fetches nothing ahead.
    await readView(again.ctx, d, -1, 0, b.subarray(0, 4 * K));
    expect(readViewNow(again.ctx, d, -1, 8 * 4 * K, b.subarray(0, 4 * K))).toBe(4 * K);
    await new Promise((r) => setTimeout(r, 50));
    expect(iterator).toHaveBeenCalledTimes(1);
    expect(readViewNow(again.ctx, d, -1, 16 * 4 * K, b.subarray(0, 4 * K))).toBeUndefined();
    expect(readViewNow(again.ctx, d, -1, 64 * 4 * K, b.subarray(0, 4 * K))).toBeUndefined();
    await new Promise((r) => setTimeout(r, 50));
    expect(iterator).toHaveBeenCalledTimes(1);
    // Sequential: 16 blocks at a time from block 0, from memory only. Past the short run the next one is
    // fetched in the background, and each after it before the reader gets there (waited for here; without
    // the read-ahead it never comes).
    for (let off = 0; off < 2 * M; off += b.length) {
      await vi.waitFor(() => expect(readViewNow(again.ctx, d, -1, off, b), `offset ${off}`).toBe(b.length), { timeout: 5000, interval: 5 });
      expect(b.equals(data.subarray(off, off + b.length)), `offset ${off}`).toBe(true);
    }
    expect(iterator.mock.calls.length).toBeGreaterThan(1);
    await again.close();
  });
});

describe('punching freed space waits for a pause in writing', () => {
  it('blocks freed while a disk is being written are punched and given back once writing pauses', async () => {
    const BS = 64 * K;
    const dir = await tempDir();
    const reg = await Registry.open({ dir });
    try {
      await reg.create('a', 32 * BS, BS);
      await reg.create('b', 4 * BS, BS);
      await writeDisk(reg.ctx, reg.disk('a'), 0, Buffer.alloc(32 * BS, 1));
      await writeDisk(reg.ctx, reg.disk('b'), 0, Buffer.alloc(4 * BS, 2));
      await reg.sync();
      const pool = reg.ctx.pool;
      const held = (): number => pool.allocator(BS).used - pool.usedBlocks(BS);
      await reg.delete('a');
      // A writer keeps writing for 2.5 s: the 32 freed blocks stay held (not punched, not allocatable).
      const until = Date.now() + 2500;
      let n = 0;
      while (Date.now() < until) {
        await writeDisk(reg.ctx, reg.disk('b'), (n++ % 4) * BS, Buffer.alloc(BS, 3 + (n % 5)));
        await new Promise((r) => setTimeout(r, 50));
      }
      expect(held(), 'held while the disk is written').toBe(32);
      // Then it pauses: they are punched and back in the allocator within about a second.
      const t0 = Date.now();
      while (held() > 0 && Date.now() - t0 < 5000) await new Promise((r) => setTimeout(r, 50));
      expect(held()).toBe(0);
      expect(Date.now() - t0).toBeLessThan(3000);
    } finally {
      await reg.close();
    }
  });
});
