// The fault layer under the FUSE edge's synchronous fast path (disk/io.ts writeDiskNow, readViewNow,
// Registry.syncNow): proof that the layer lets the production write path through, and failures of writes
// the fast path acknowledged before they were written (write-behind): the next fsync reports them, the
// fast path stops taking writes, and the store reopens with every synced byte and checks clean.
import { afterAll, describe, expect, it } from 'vitest';
import { Registry } from '../../src/disk/registry.js';
import { readView, readViewNow, writeDiskNow } from '../../src/disk/io.js';
import { createSnapshot } from '../../src/disk/snapshots.js';
import type { FaultPlan } from '../../src/store/faulty.js';
import { cleanupDirs, prng, randomBytes, tempDir } from './helpers.js';
import { K, M, expectCleanCheck, expectSame, openFaulty, readAll, syncVia, writeVia } from './faultHelpers.js';

afterAll(cleanupDirs);

/** Close a registry whose pool failed: Registry.close() reports the failure (its sync) and still closes the store. */
async function closeFailed(reg: Registry): Promise<void> {
  await expect(reg.close()).rejects.toThrow();
}

/** Close, check clean, reopen: disk d holds `model` and its snapshot 0 `snap`. */
async function closeAndReopen(reg: Registry, dir: string, model: Buffer, snap: Buffer): Promise<void> {
  await reg.close();
  await expectCleanCheck(dir);
  const again = await Registry.open({ dir });
  try {
    expectSame(await readAll(again, 'd'), model, 'live disk after reopen');
    expectSame(await readAll(again, 'd', 0), snap, 'snapshot after reopen');
  } finally {
    await again.close();
  }
}

describe('the fault layer under the fast path', () => {
  it('writes, copy-on-write, reads and fsync go through the production fast path (stageBehind, copyBehind, readSync, syncNow)', async () => {
    const dir = await tempDir();
    const { reg, layers } = await openFaulty(dir, {});
    const BS = 64 * K;
    await reg.create('d', 2 * M, BS);
    const d = reg.disk('d');
    const model = Buffer.alloc(2 * M);
    const rnd = prng(21);
    const first = randomBytes(rnd, BS);
    await writeVia('async path', reg, d, 0, first); // opens the block store (the fast path never opens one)
    first.copy(model, 0);
    const fast = (off: number, len: number): void => {
      const data = randomBytes(rnd, len);
      expect(writeDiskNow(reg.ctx, d, off, data), `the fast path took the write at ${off}+${len}`).toBe(len);
      data.copy(model, off);
    };
    fast(BS, 4 * BS); // new blocks
    fast(BS + 100, 3000); // in place
    await reg.sync();
    await createSnapshot(reg.ctx, d, 's');
    const snap = Buffer.from(model);
    fast(2 * BS + 512, 4096); // a partial write into a block the snapshot holds: copied behind
    fast(2 * BS + 8192, 100); // and again into the new block, in place, ordered after the copy
    const layer = layers[0]!;
    expect(layer.calls.stageBehind).toBeGreaterThan(0);
    if (layer.copyBehind) expect(layer.calls.copyBehind).toBe(1); // (the page-cache bottom, on tmpfs, merges instead)
    await reg.sync();
    const got = Buffer.alloc(3 * BS);
    expect(readViewNow(reg.ctx, d, -1, 0, got), 'the fast path took the read').toBe(3 * BS);
    expectSame(got, model.subarray(0, 3 * BS), 'read through the fast path');
    expect(layer.calls.readSync).toBeGreaterThan(0);
    fast(2 * BS + 1024, 2048); // in place (block 2 is the disk's own since the copy), whole sectors: staged, not in flight
    if (layer.syncNow) {
      expect(reg.syncNow(), 'fsync on the event loop: nothing in flight').toBe(true);
      expect(layer.calls.syncNow).toBeGreaterThan(0);
    }
    await closeAndReopen(reg, dir, model, snap);
  });

  it('fsync on the event loop declines once the pool files\' space changed, until a flush on the thread pool covered it', async () => {
    const dir = await tempDir();
    const { reg, layers } = await openFaulty(dir, {});
    const BS = 64 * K;
    await reg.create('d', 2 * M, BS);
    const d = reg.disk('d');
    const rnd = prng(22);
    await writeVia('async path', reg, d, 0, randomBytes(rnd, BS)); // opens the block store
    await reg.sync();
    const fast = (off: number, len: number): void => {
      expect(writeDiskNow(reg.ctx, d, off, randomBytes(rnd, len)), `the fast path took the write at ${off}+${len}`).toBe(len);
    };
    const layer = layers[0]!;
    fast(512, 4096); // in place (the block's first: its write intent, a synced batch, settles with the sync)
    await reg.sync();
    fast(8192, 4096); // in place again: a pure flush may block the event loop
    if (layer.syncNow) expect(reg.syncNow(), 'nothing in flight, no space changed').toBe(true);
    fast(3 * BS, BS); // a new block: allocated pool space
    // A synced batch that is not a flush of the pool (a snapshot's, a control command's): the tables are
    // settled, the pool's new space is not flushed yet.
    await reg.ctx.commit([], true);
    expect(reg.ctx.settled).toBe(true);
    expect(reg.syncNow(), 'the flush would commit the filesystem\'s journal: the thread pool does it').toBe(false);
    await reg.sync();
    fast(3 * BS + 512, 4096); // in place in the new block
    if (layer.syncNow) expect(reg.syncNow(), 'covered by the flush before').toBe(true);
    await reg.close();
    await expectCleanCheck(dir);
  });
});

describe('a write whose entries are not in memory yet (a disk mounted afresh)', () => {
  it('reads the entries and gives a partial write into a block a snapshot holds to the fast path (copied behind)', async () => {
    const dir = await tempDir();
    const BS = 64 * K;
    const rnd = prng(33);
    const model = randomBytes(rnd, 8 * BS);
    {
      const { reg } = await openFaulty(dir, {});
      await reg.create('d', 8 * BS, BS);
      await writeVia('async path', reg, reg.disk('d'), 0, model);
      await createSnapshot(reg.ctx, reg.disk('d'), 's');
      await reg.close();
    }
    const snap = Buffer.from(model);
    const { reg, layers } = await openFaulty(dir, {});
    const disk = reg.diskView('d');
    const d = reg.disk('d');
    await writeVia('async path', reg, d, 7 * BS, model.subarray(7 * BS)); // opens the block store
    expect(d.live.peek(3), 'block 3 is not in memory').toBeUndefined();
    const data = randomBytes(rnd, 8 * K);
    const n = disk.write(data, 3 * BS + 16 * K);
    expect(typeof n, 'the first try declined: the entry had to be read').not.toBe('number');
    expect(await n).toBe(data.length);
    data.copy(model, 3 * BS + 16 * K);
    const layer = layers[0]!;
    if (layer.copyBehind) expect(layer.calls.copyBehind, 'the second try took it and copied the block behind').toBe(1);
    await reg.sync();
    expectSame(await readAll(reg, 'd'), model, 'live disk');
    expectSame(await readAll(reg, 'd', 0), snap, 'snapshot');
    await closeAndReopen(reg, dir, model, snap);
  });
});

describe('a failed write the fast path acknowledged', () => {
  // Each case: synced content, then one fast-path write whose Nth store write fails behind the caller's
  // back. The write was acknowledged; the next fsync must fail, the fast path must decline from then on,
  // and the store must reopen with the synced content and check clean. The failed write's blocks read as
  // before it (the layer never wrote them); new blocks reserved for it are given back.
  const BS = 4 * K;
  const SIZE = 1 * M;
  const cases: { name: string; snapshot: boolean; off: number; len: number; failNth: number }[] = [
    { name: 'new blocks (a hole), first write fails', snapshot: false, off: 600 * K, len: 5 * BS, failNth: 1 },
    { name: 'new blocks (a hole), third write fails', snapshot: false, off: 600 * K, len: 5 * BS, failNth: 3 },
    { name: 'in-place overwrite', snapshot: false, off: 12 * K, len: BS, failNth: 1 },
    { name: 'partial in-place overwrite', snapshot: false, off: 12 * K + 77, len: 200, failNth: 1 },
    { name: 'copy-on-write after a snapshot', snapshot: true, off: 8 * K, len: 3 * BS, failNth: 2 },
  ];
  for (const c of cases) {
    it(c.name, async () => {
      const dir = await tempDir();
      const plan: FaultPlan = {};
      const { reg, layers } = await openFaulty(dir, plan);
      const rnd = prng(0xfa57 + c.off + c.failNth);
      await reg.create('d', SIZE, BS);
      const d = reg.disk('d');
      const model = Buffer.alloc(SIZE);
      const base = randomBytes(rnd, 64 * K);
      await writeVia('fast path', reg, d, 0, base);
      // Written twice: the second write lands in place and leaves the blocks without checksums (dirty,
      // disk/sums.ts), so that the overwrite below is one the fast path takes (a first overwrite of a
      // block with trusted checksums drops them durably on the async path first).
      await writeVia('fast path', reg, d, 0, base);
      base.copy(model, 0);
      // Every table entry in memory, holes included (the fast path takes only writes whose entries are):
      // one read of the whole disk, which fetches them in order.
      await readView(reg.ctx, d, -1, 0, Buffer.alloc(SIZE));
      if (c.snapshot) await createSnapshot(reg.ctx, d, 's');
      await syncVia('fast path', reg);
      const used = reg.ctx.pool.usedBytes();
      const layer = layers[0]!;
      plan.failWriteAt = layer.writes + c.failNth;
      const staged = layer.calls.stageBehind;
      expect(writeDiskNow(reg.ctx, d, c.off, randomBytes(rnd, c.len)), 'acknowledged by the fast path').toBe(c.len);
      expect(layer.calls.stageBehind).toBeGreaterThan(staged);
      delete plan.failWriteAt;
      await expect(syncVia('fast path', reg), 'the fsync after the failed write').rejects.toThrow();
      await expect(syncVia('fast path', reg), 'and every later one').rejects.toThrow();
      expect(writeDiskNow(reg.ctx, d, 900 * K, randomBytes(rnd, BS)), 'the fast path declines after a failed write').toBeUndefined();
      await reg.ctx.drain();
      expect(reg.ctx.pool.usedBytes(), 'blocks reserved for the failed write are given back').toBe(used);
      await closeFailed(reg);
      await expectCleanCheck(dir);
      const again = await Registry.open({ dir });
      try {
        expectSame(await readAll(again, 'd'), model, 'live disk after reopen');
        if (c.snapshot) expectSame(await readAll(again, 'd', 0), model, 'snapshot after reopen');
      } finally {
        await again.close();
      }
    });
  }
});
