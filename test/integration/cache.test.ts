// The kernel's page cache across opens (mount option auto_cache): a file's cached pages survive a new open
// while its mtime and size are unchanged. Checked here: pages really are kept (fincore, which opens the
// file itself), and every way a file's contents change other than by a write through the mount drops
// them: rollback, restore into the disk, shrink and grow back to the same size, delete and create again
// under the same name, a snapshot made again under the same name, rendered status files.

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { M, VdiskMount, expectSame, q, randomBuffer, readRange, requireBuild, shOk, teardownAll, writeAt } from './helpers.js';

let m: VdiskMount;
const SIZE = 8 * M;
const DATA = 4 * M;

beforeAll(async () => {
  requireBuild();
  m = await VdiskMount.create();
});

afterAll(async () => {
  await teardownAll();
});

/** Bytes of `path` in the page cache, as fincore sees them after its own open of the file. */
async function cached(path: string): Promise<number> {
  return Number((await shOk(`fincore --bytes --noheadings --output RES ${q(path)}`)).trim());
}

/** Read the first `n` bytes (one open), so that they are in the page cache afterwards. */
async function readFirst(path: string, n = DATA): Promise<Buffer> {
  return readRange(path, 0, n);
}

/** Write `data` at 0, read it back so it is cached, and check that the cache survives an open. */
async function writeAndCache(path: string, data: Buffer): Promise<void> {
  await writeAt(path, 0, data);
  expectSame(await readFirst(path, data.length), data, `${path} after the write`);
  expect(await cached(path), `${path}: pages kept across opens`).toBeGreaterThanOrEqual(data.length);
}

describe('page cache across opens', () => {
  it('keeps a disk cached while it is unchanged, and a write through the mount is read back by the next open', async () => {
    await m.ctlOk(`create c1 ${SIZE}`);
    const disk = m.disk('c1');
    const a = randomBuffer(1, DATA);
    await writeAndCache(disk, a);
    expectSame(await readFirst(disk), a, 'second read');
    const patch = randomBuffer(2, 64 * 1024 + 3);
    await writeAt(disk, M + 5, patch);
    patch.copy(a, M + 5);
    expectSame(await readFirst(disk), a, 'read after a write in another open');
    await m.ctlOk('delete c1');
  });

  it('drops a disk’s pages after a rollback', async () => {
    await m.ctlOk(`create c2 ${SIZE}`);
    const disk = m.disk('c2');
    const a = randomBuffer(10, DATA);
    await writeAt(disk, 0, a);
    await m.ctlOk('snapshot c2 s1');
    await writeAndCache(disk, randomBuffer(11, DATA));
    await m.ctlOk('rollback c2 s1');
    expectSame(await readFirst(disk), a, 'disk after rollback');
    await m.ctlOk('delete c2 -r');
  });

  it('drops a disk’s pages after a restore into it (method 2)', async () => {
    await m.ctlOk(`create c3 ${SIZE}`);
    const disk = m.disk('c3');
    const c = randomBuffer(20, DATA);
    await writeAt(disk, 0, c);
    await m.ctlOk('snapshot c3 s1');
    const img = join(m.root, 'c3.img');
    await shOk(`dd if=${q(join(m.mp, '.vdisk/copies/c3/s1'))} of=${q(img)} bs=1M status=none`);
    await writeAndCache(disk, randomBuffer(21, DATA));
    await shOk(`dd if=${q(img)} of=${q(join(m.mp, '.vdisk/restore/c3'))} bs=1M status=none`);
    expectSame(await readFirst(disk), c, 'disk after restore');
    await m.ctlOk('delete c3 -r');
  });

  it('drops a disk’s pages after a shrink and a grow back to the same size', async () => {
    await m.ctlOk(`create c4 ${SIZE}`);
    const disk = m.disk('c4');
    const a = randomBuffer(30, DATA);
    await writeAndCache(disk, a);
    await m.ctlOk(`resize c4 ${M}`);
    await m.ctlOk(`resize c4 ${SIZE}`);
    expectSame(await readFirst(disk), Buffer.concat([a.subarray(0, M), Buffer.alloc(DATA - M)]), 'disk after shrink and grow');
    await m.ctlOk('delete c4');
  });

  it('drops a disk’s pages when it is deleted and created again under the same name and size', async () => {
    await m.ctlOk(`create c5 ${SIZE}`);
    const disk = m.disk('c5');
    await writeAndCache(disk, randomBuffer(40, DATA));
    await m.ctlOk('delete c5');
    await m.ctlOk(`create c5 ${SIZE}`);
    expectSame(await readFirst(disk), Buffer.alloc(DATA), 'new disk under the old name');
    await m.ctlOk('delete c5');
  });

  it('keeps a snapshot cached, and drops it for a snapshot made again under the same name', async () => {
    await m.ctlOk(`create c6 ${SIZE}`);
    const disk = m.disk('c6');
    const snap = m.snap('c6', 'x');
    await writeAt(disk, 0, randomBuffer(50, DATA));
    await m.ctlOk('snapshot c6 x');
    await readFirst(snap);
    expect(await cached(snap), 'snapshot pages kept across opens').toBeGreaterThanOrEqual(DATA);
    const b = randomBuffer(51, DATA);
    await writeAt(disk, 0, b);
    await m.ctlOk('delete-snapshot c6 x');
    await m.ctlOk('snapshot c6 x');
    expectSame(await readFirst(snap), b, 'snapshot made again');
    await m.ctlOk('delete c6 -r');
  });

  it('renders status anew at every open', async () => {
    const status = join(m.mp, '.vdisk/status');
    const before = await shOk(`cat ${q(status)}`);
    await m.ctlOk(`create c7 ${SIZE}`);
    const after = await shOk(`cat ${q(status)}`);
    expect(before).not.toContain('c7');
    expect(after).toContain('c7');
    await m.ctlOk('delete c7');
    expect(await shOk(`cat ${q(status)}`)).not.toContain('c7');
  });
});
