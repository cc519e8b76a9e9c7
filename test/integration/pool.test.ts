// The pool is the physical capacity: filling it gives ENOSPC without losing earlier data, allocated blocks
// stay writable when full, deleting frees space, and df reports the pool.

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { K, M, VdiskMount, dd, ddBytes, duBytes, errnoOf, randomBuffer, readRange, requireBuild, sh, sha256, teardownAll, writeAt } from './helpers.js';

const POOL = 8 * M;
const BS = 64 * K;

let m: VdiskMount;
let scratch: string;

beforeAll(async () => {
  requireBuild();
  m = await VdiskMount.create({ poolSize: '8M' });
  scratch = await m.scratch('scratch');
});

afterAll(async () => {
  await teardownAll();
});

/**
 * What df shows for a pool with `used` bytes in use: statfs reports 1 MiB fragments, so the available
 * space is rounded down to whole MiB (and used = size - avail).
 */
function dfOf(used: number): { size: number; used: number; avail: number } {
  const avail = Math.floor((POOL - used) / M) * M;
  return { size: POOL, used: POOL - avail, avail };
}

async function df(): Promise<{ size: number; used: number; avail: number }> {
  const r = await sh(`df --block-size=1 --output=size,used,avail ${m.mp} | tail -1`);
  const [size, used, avail] = r.stdout.trim().split(/\s+/).map(Number);
  return { size: size!, used: used!, avail: avail! };
}

describe('pool', () => {
  let written = 0;
  const source = randomBuffer(1234, 16 * M);

  it('df reports the pool size, empty', async () => {
    const st = await m.status();
    expect(st.pool).toEqual({ capacity: POOL, usedBytes: 0, freeBytes: POOL, blockStore: 'file' });
    expect(await df()).toEqual(dfOf(0));
  });

  it('dd fills a disk until ENOSPC and everything written before the error is intact', async () => {
    await m.ctlOk('create fill 16M');
    await m.ctlOk('create other 4M');
    const src = join(scratch, 'src');
    await writeFile(src, source);
    const r = await dd({ if: src, of: m.disk('fill'), bs: BS, conv: 'notrunc' });
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/No space left on device/);
    written = ddBytes(r);
    // The whole pool went to this disk: exactly POOL bytes were accepted, no more, no less.
    expect(written).toBe(POOL);
    const st = await m.status();
    expect(st.pool).toEqual({ capacity: POOL, usedBytes: POOL, freeBytes: 0, blockStore: 'file' });
    expect(st.disks.find((d) => d.name === 'fill')!.allocatedBytes).toBe(POOL);
    expect(await duBytes(m.disk('fill'))).toBe(POOL);
    // Data before the error intact, the rest of the disk zeros.
    const got = await readRange(m.disk('fill'), 0, 16 * M);
    expect(got.length).toBe(16 * M);
    expect(sha256(got.subarray(0, written))).toBe(sha256(source.subarray(0, written)));
    expect(got.subarray(written).equals(Buffer.alloc(16 * M - written))).toBe(true);
    expect(await df()).toEqual(dfOf(POOL));
  });

  it('when full, a new block fails with ENOSPC but allocated blocks can be overwritten', async () => {
    // A new block on another disk, and past the filled part of this one: ENOSPC.
    expect(await errnoOf(() => writeAt(m.disk('other'), 0, randomBuffer(1, 4096)))).toBe('ENOSPC');
    expect(await errnoOf(() => writeAt(m.disk('fill'), written + 100, randomBuffer(2, 10)))).toBe('ENOSPC');
    // Overwrite of an allocated region, unaligned and across a block boundary: works.
    const patch = randomBuffer(3, BS + 100);
    await writeAt(m.disk('fill'), 1 * M - 50, patch, true);
    patch.copy(source, 1 * M - 50);
    // A full-block overwrite too.
    const blk = randomBuffer(4, BS);
    await writeAt(m.disk('fill'), 5 * BS, blk, true);
    blk.copy(source, 5 * BS);
    const got = await readRange(m.disk('fill'), 0, written);
    expect(sha256(got)).toBe(sha256(source.subarray(0, written)));
    expect((await readRange(m.disk('other'), 0, 4096)).equals(Buffer.alloc(4096))).toBe(true);
    expect((await m.status()).pool.usedBytes).toBe(POOL);
  });

  it('when full, writing a whole zero block to a hole needs no space and succeeds', async () => {
    expect(await errnoOf(() => writeAt(m.disk('other'), BS, Buffer.alloc(BS), true))).toBe('OK');
    expect((await m.status()).pool.usedBytes).toBe(POOL);
  });

  it('freeing blocks (zero block write, delete) makes writes work again', async () => {
    // Zeroing one allocated block frees it: one new block fits.
    await writeAt(m.disk('fill'), 10 * BS, Buffer.alloc(BS), true); // fsync: the freed block is released when its batch commits
    source.fill(0, 10 * BS, 11 * BS);
    expect((await m.status()).pool.usedBytes).toBe(POOL - BS);
    const one = randomBuffer(5, BS);
    await writeAt(m.disk('other'), 0, one, true);
    expect(await errnoOf(() => writeAt(m.disk('other'), 2 * BS, randomBuffer(6, 10)))).toBe('ENOSPC');
    // Deleting the big disk frees all of its space.
    await m.ctlOk('delete fill');
    const st = await m.status();
    expect(st.pool).toEqual({ capacity: POOL, usedBytes: BS, freeBytes: POOL - BS, blockStore: 'file' });
    expect(await df()).toEqual(dfOf(BS));
    expect((await df()).avail).toBe(7 * M);
    const more = randomBuffer(7, 3 * M);
    await writeAt(m.disk('other'), 1 * M, more, true);
    expect((await readRange(m.disk('other'), 0, BS)).equals(one)).toBe(true);
    expect((await readRange(m.disk('other'), 1 * M, 3 * M)).equals(more)).toBe(true);
    expect((await m.status()).pool.usedBytes).toBe(BS + 3 * M);
    expect(await df()).toEqual(dfOf(BS + 3 * M));
  });

  it('a freshly created disk can use all the space that was freed', async () => {
    await m.ctlOk('create refill 16M');
    const src = join(scratch, 'src2');
    const data = randomBuffer(99, 16 * M);
    await writeFile(src, data);
    const r = await dd({ if: src, of: m.disk('refill'), bs: BS, conv: 'notrunc' });
    expect(r.stderr).toMatch(/No space left on device/);
    const n = ddBytes(r);
    expect(n).toBe(POOL - BS - 3 * M);
    expect(sha256(await readRange(m.disk('refill'), 0, n))).toBe(sha256(data.subarray(0, n)));
    expect((await m.status()).pool).toEqual({ capacity: POOL, usedBytes: POOL, freeBytes: 0, blockStore: 'file' });
  });

  it('when full, copy-on-write for a snapshot fails with ENOSPC and changes nothing', async () => {
    // The pool is full (previous test). A snapshot costs nothing...
    expect((await m.status()).pool.freeBytes).toBe(0);
    await m.ctlOk('snapshot refill s');
    const before = await readRange(m.disk('refill'), 0, 16 * M);
    // ...but overwriting a block the snapshot shares needs a new block: ENOSPC, nothing changes.
    expect(await errnoOf(() => writeAt(m.disk('refill'), 3, randomBuffer(8, 10)))).toBe('ENOSPC');
    expect(await errnoOf(() => writeAt(m.disk('refill'), 2 * BS, randomBuffer(9, BS)))).toBe('ENOSPC');
    expect((await readRange(m.disk('refill'), 0, 16 * M)).equals(before)).toBe(true);
    expect((await readRange(m.snap('refill', 's'), 0, 16 * M)).equals(before)).toBe(true);
    // Rollback to a snapshot needs fresh blocks for changed blocks only; with none changed it may succeed
    // or fail with ENOSPC, but either way the content is the snapshot's.
    const rb = await m.ctl('rollback refill s');
    expect(rb.ok || rb.code === 'ENOSPC').toBe(true);
    expect((await readRange(m.disk('refill'), 0, 16 * M)).equals(before)).toBe(true);
    expect((await m.status()).pool).toEqual({ capacity: POOL, usedBytes: POOL, freeBytes: 0, blockStore: 'file' });
    // Dropping the snapshot makes the blocks the live disk's alone: in-place overwrite works again.
    await m.ctlOk('delete-snapshot refill s');
    const patch = randomBuffer(10, 1000);
    await writeAt(m.disk('refill'), 3, patch, true);
    patch.copy(before, 3);
    expect((await readRange(m.disk('refill'), 0, 16 * M)).equals(before)).toBe(true);
    expect((await m.status()).pool.usedBytes).toBe(POOL);
  });
});

describe('freed space goes back to the host filesystem', () => {
  /** Poll `du` of the pool file until it is at most `max` bytes (punching runs in the background). */
  async function duAtMost(file: string, max: number): Promise<number> {
    let du = await duBytes(file);
    for (let i = 0; i < 100 && du > max; i++) {
      await new Promise((r) => setTimeout(r, 100));
      du = await duBytes(file);
    }
    return du;
  }

  it('deleting a disk punches its blocks out of the pool file; an old store’s free space is punched at mount', async () => {
    const m = await VdiskMount.create();
    const pool = join(m.store, 'pool-65536.dat');
    await m.ctlOk('create big 64M');
    await m.ctlOk('create keep 8M');
    const big = randomBuffer(91, 64 * M);
    const keep = randomBuffer(92, 8 * M);
    await writeAt(m.disk('big'), 0, big, true);
    await writeAt(m.disk('keep'), 0, keep, true); // after big in the pool file: the file cannot just shrink
    await m.ctlOk('snapshot keep s');
    const full = await duBytes(pool);
    expect(full).toBeGreaterThanOrEqual(72 * M);
    await m.ctlOk('delete big');
    const after = await duAtMost(pool, 16 * M);
    expect(after, `du of the pool file after deleting 64 MiB: ${after}`).toBeLessThanOrEqual(16 * M);
    expect(sha256(await readRange(m.disk('keep'), 0, 8 * M))).toBe(sha256(keep));
    // New writes reuse the punched space (the file does not grow).
    const size = (await sh(`stat -c %s ${pool}`)).stdout.trim();
    await m.ctlOk('create again 32M');
    const again = randomBuffer(93, 32 * M);
    await writeAt(m.disk('again'), 0, again, true);
    expect((await sh(`stat -c %s ${pool}`)).stdout.trim()).toBe(size);
    await m.unmount();
    // A store whose free space still holds data (written before punching existed): the mount punches it.
    await sh(`dd if=/dev/urandom of=${pool} bs=1M seek=40 count=24 conv=notrunc status=none`);
    expect(await duBytes(pool)).toBeGreaterThanOrEqual(64 * M); // again (32) + the free area (24) + keep (8)
    await m.mount();
    const reopened = await duAtMost(pool, 48 * M);
    expect(reopened, `du after the mount: ${reopened}`).toBeLessThanOrEqual(48 * M);
    expect(sha256(await readRange(m.disk('keep'), 0, 8 * M))).toBe(sha256(keep));
    expect(sha256(await readRange(m.disk('again'), 0, 32 * M))).toBe(sha256(again));
    await m.unmount();
    const c = await sh(`node ${join(process.cwd(), 'dist/cli/main.js')} check --store ${m.store}`);
    expect(c.code, c.stdout + c.stderr).toBe(0);
  });
});
