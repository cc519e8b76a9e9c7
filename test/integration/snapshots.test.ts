// Snapshots, rollback and clones through a real mount: byte-exact content of every view, read-only
// snapshot files, space accounting as snapshots are deleted in different orders, ext4 snapshots
// loop-mounted read-only, and persistence over a remount.

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { open, readdir, stat, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import {
  K,
  M,
  VdiskMount,
  dd,
  errnoOf,
  expectSame,
  loopAvailable,
  makeTree,
  q,
  randomBuffer,
  readRange,
  requireBuild,
  sh,
  sha256,
  shOk,
  teardownAll,
  writeAt,
} from './helpers.js';

const noLoop = !(await loopAvailable('snapshots.test.ts'));

let m: VdiskMount;

beforeAll(async () => {
  requireBuild();
  m = await VdiskMount.create();
});

afterAll(async () => {
  await teardownAll();
});

async function readAll(path: string): Promise<Buffer> {
  const size = (await stat(path)).size;
  const b = await readRange(path, 0, size + 4096);
  expect(b.length, `${path} reads exactly its size`).toBe(size);
  return b;
}

/** A disk with a model of its content; write() applies to both. */
class Model {
  data: Buffer;
  constructor(
    readonly name: string,
    readonly size: number,
    readonly bs: number,
  ) {
    this.data = Buffer.alloc(size);
  }
  static async create(name: string, size: number, bs = 64 * K): Promise<Model> {
    await m.ctlOk(`create ${name} ${size} block-size=${bs}`);
    return new Model(name, size, bs);
  }
  /** pwrite + fsync: fsync is the commit point, after which space accounting (freed blocks) is settled. */
  async write(off: number, buf: Buffer): Promise<void> {
    await writeAt(m.disk(this.name), off, buf, true);
    buf.copy(this.data, off);
  }
  async verify(what = `live ${this.name}`): Promise<void> {
    expectSame(await readAll(m.disk(this.name)), this.data, what);
  }
  /** Bytes of the blocks of `data` that are not all zeros. */
  static allocated(data: Buffer, bs: number): number {
    let n = 0;
    for (let b = 0; b < data.length; b += bs) if (data.subarray(b, b + bs).some((v) => v !== 0)) n++;
    return n * bs;
  }
}

describe('snapshots', () => {
  it('a snapshot keeps the old content while the live disk changes', async () => {
    const d = await Model.create('sa', 4 * M);
    const A = randomBuffer(1, 2 * M);
    await d.write(0, A);
    await m.ctlOk('snapshot sa s1');
    const atSnap = Buffer.from(d.data);
    // B over part of A (unaligned), and into the hole half.
    await d.write(100, randomBuffer(2, 1.5 * M));
    await d.write(3 * M + 7, randomBuffer(3, 100 * K));
    expectSame(await readAll(m.snap('sa', 's1')), atSnap, 'snapshot sa@s1');
    await d.verify();
    expect(await readdir(join(m.vdisk, 'snapshots'))).toContain('sa');
    expect(await readdir(join(m.vdisk, 'snapshots', 'sa'))).toEqual(['s1']);
    expect((await stat(m.snap('sa', 's1'))).size).toBe(4 * M);
    // The snapshot holds exactly the blocks of A the live disk overwrote: [100, 1.5M+100) -> blocks 0..24.
    const st = await m.diskStatus('sa');
    expect(st!.snapshots).toHaveLength(1);
    expect(st!.snapshots[0]).toMatchObject({ name: 's1', size: 4 * M, heldBytes: 25 * 64 * K });
    expect(st!.allocatedBytes).toBe(Model.allocated(d.data, d.bs));
  });

  it('snapshot files are read-only', async () => {
    const p = m.snap('sa', 's1');
    const before = sha256(await readAll(p));
    expect(['EROFS', 'EACCES']).toContain(await errnoOf(() => open(p, 'r+')));
    expect(['EROFS', 'EACCES']).toContain(await errnoOf(() => open(p, 'w')));
    expect(['EROFS', 'EACCES']).toContain(await errnoOf(() => writeFile(p, 'x')));
    expect(await errnoOf(() => truncate(p, 0))).not.toBe('OK');
    expect(await errnoOf(() => truncate(p, 1 * M))).not.toBe('OK');
    const r = await dd({ if: '/dev/zero', of: p, bs: 4096, count: 1, conv: 'notrunc' });
    expect(r.code).not.toBe(0);
    expect((await stat(p)).size).toBe(4 * M);
    expect(sha256(await readAll(p))).toBe(before);
    // A snapshot with the same name again: EEXIST; a snapshot file cannot be deleted while open.
    expect(await m.ctl('snapshot sa s1')).toEqual({ ok: false, code: 'EEXIST' });
    const fh = await open(p, 'r');
    try {
      expect(await m.ctl('delete-snapshot sa s1')).toEqual({ ok: false, code: 'EBUSY' });
    } finally {
      await fh.close();
    }
    expect(await readdir(join(m.vdisk, 'snapshots', 'sa'))).toEqual(['s1']);
  });

  it('a block that was a hole at snapshot time reads as zeros in the snapshot after the live disk writes it', async () => {
    const d = await Model.create('hz', 1 * M, 4 * K);
    await d.write(0, randomBuffer(10, 4 * K));
    await m.ctlOk('snapshot hz empty-ish');
    const atSnap = Buffer.from(d.data);
    await d.write(4 * K, randomBuffer(11, 4 * K)); // whole hole block
    await d.write(10 * K + 1, randomBuffer(12, 3)); // partial write into a hole block
    await d.write(1 * M - 4 * K, randomBuffer(13, 4 * K)); // last block
    const snap = await readAll(m.snap('hz', 'empty-ish'));
    expectSame(snap, atSnap, 'snapshot hz@empty-ish');
    expect(snap.subarray(4 * K).equals(Buffer.alloc(1 * M - 4 * K))).toBe(true);
    await d.verify();
    // Holes preserve no data: the snapshot holds nothing.
    expect((await m.diskStatus('hz'))!.snapshots[0]!.heldBytes).toBe(0);
  });

  it('several snapshots with interleaved writes each read back their own state', async () => {
    const d = await Model.create('multi', 2 * M, 4 * K);
    const states: Buffer[] = [];
    for (let i = 0; i < 5; i++) {
      // Overlapping unaligned writes, one zero-block write (frees a live block), one into fresh space.
      await d.write((i * 123_457) % (1 * M), randomBuffer(100 + i, 300_001));
      await d.write(1 * M + i * 50_000, randomBuffer(200 + i, 777));
      if (i === 2) await d.write(8 * K, Buffer.alloc(8 * K));
      await m.ctlOk(`snapshot multi s${i}`);
      states.push(Buffer.from(d.data));
    }
    await d.write(5, randomBuffer(300, 2 * M - 10));
    for (let i = 0; i < 5; i++) expectSame(await readAll(m.snap('multi', `s${i}`)), states[i]!, `multi@s${i}`);
    await d.verify();
    expect((await m.diskStatus('multi'))!.snapshots.map((s) => s.name)).toEqual(['s0', 's1', 's2', 's3', 's4']);
    expect((await readdir(join(m.vdisk, 'snapshots', 'multi'))).sort()).toEqual(['s0', 's1', 's2', 's3', 's4']);
  });

  const orders: [string, number[]][] = [
    ['oldest first', [0, 1, 2]],
    ['newest first', [2, 1, 0]],
    ['middle, then oldest', [1, 0, 2]],
    ['middle, then newest', [1, 2, 0]],
  ];
  for (const [label, order] of orders) {
    it(`delete-snapshot (${label}) keeps the others and live intact; space returns to the live allocation`, async () => {
      const base = (await m.status()).pool.usedBytes;
      const name = `del${order.join('')}`;
      const d = await Model.create(name, 1 * M, 4 * K);
      const states: Buffer[] = [];
      // Three snapshots; writes between them overlap, so blocks are shared by some snapshots only.
      await d.write(0, randomBuffer(1, 600 * K));
      await m.ctlOk(`snapshot ${name} s0`);
      states.push(Buffer.from(d.data));
      await d.write(100 * K + 3, randomBuffer(2, 300 * K));
      await d.write(800 * K, randomBuffer(3, 100 * K));
      await m.ctlOk(`snapshot ${name} s1`);
      states.push(Buffer.from(d.data));
      await d.write(200 * K, randomBuffer(4, 300 * K));
      await d.write(0, Buffer.alloc(16 * K)); // frees 4 live blocks
      await m.ctlOk(`snapshot ${name} s2`);
      states.push(Buffer.from(d.data));
      await d.write(50 * K + 1, randomBuffer(5, 500 * K));
      await d.write(820 * K, Buffer.alloc(8 * K));

      const left = new Set([0, 1, 2]);
      for (const k of order) {
        await m.ctlOk(`delete-snapshot ${name} s${k}`);
        left.delete(k);
        for (const j of left) expectSame(await readAll(m.snap(name, `s${j}`)), states[j]!, `${name}@s${j} after deleting s${k}`);
        await d.verify(`live ${name} after deleting s${k}`);
        expect((await readdir(join(m.vdisk, 'snapshots', name))).sort()).toEqual([...left].map((j) => `s${j}`).sort());
        const st = await m.status();
        const ds = st.disks.find((x) => x.name === name)!;
        expect(st.pool.usedBytes).toBe(base + ds.allocatedBytes + ds.snapshots.reduce((a, s) => a + s.heldBytes, 0));
      }
      const st = await m.status();
      const ds = st.disks.find((x) => x.name === name)!;
      expect(ds.snapshots).toEqual([]);
      expect(ds.allocatedBytes).toBe(Model.allocated(d.data, d.bs));
      expect(st.pool.usedBytes).toBe(base + ds.allocatedBytes);
      await m.ctlOk(`delete ${name}`);
      expect((await m.status()).pool.usedBytes).toBe(base);
    });
  }

  it('rollback restores the snapshot exactly, and is refused while the disk is open', async () => {
    const d = await Model.create('rb', 2 * M);
    await d.write(1000, randomBuffer(20, 700 * K));
    await m.ctlOk('snapshot rb s1');
    const s1 = Buffer.from(d.data);
    const s1Alloc = Model.allocated(s1, d.bs);
    await d.write(500 * K, randomBuffer(21, 600 * K));
    await d.write(0, Buffer.alloc(64 * K)); // free a block that s1 has
    await m.ctlOk('snapshot rb s2');
    const s2 = Buffer.from(d.data);
    await d.write(1.5 * M, randomBuffer(22, 100 * K)); // a hole in s1 and s2

    const fh = await open(m.disk('rb'), 'r');
    try {
      expect(await m.ctl('rollback rb s1')).toEqual({ ok: false, code: 'EBUSY' });
    } finally {
      await fh.close();
    }
    await d.verify('live rb after a refused rollback');

    await m.ctlOk('rollback rb s1');
    d.data = Buffer.from(s1);
    await d.verify('live rb after rollback to s1');
    expect((await m.diskStatus('rb'))!.allocatedBytes).toBe(s1Alloc);
    // Both snapshots still read their own content.
    expectSame(await readAll(m.snap('rb', 's1')), s1, 'rb@s1 after rollback');
    expectSame(await readAll(m.snap('rb', 's2')), s2, 'rb@s2 after rollback to s1');
    // Writes after the rollback work and do not reach the snapshots; rollback to s2 then works too.
    await d.write(10, randomBuffer(23, 1000));
    expectSame(await readAll(m.snap('rb', 's1')), s1, 'rb@s1 after write');
    await m.ctlOk('rollback rb s2');
    d.data = Buffer.from(s2);
    await d.verify('live rb after rollback to s2');
    expectSame(await readAll(m.snap('rb', 's1')), s1, 'rb@s1 at the end');
    expect((await m.history()).filter((h) => h.command === 'rollback rb s1').map((h) => h.result)).toEqual(['error', 'ok']);
  });

  it('a clone starts equal to the snapshot and is independent of its origin', async () => {
    const d = await Model.create('orig', 1 * M, 4 * K);
    await d.write(3, randomBuffer(30, 500_000));
    await m.ctlOk('snapshot orig base');
    const snap = Buffer.from(d.data);
    await d.write(100_000, randomBuffer(31, 10_000)); // the origin moves on before the clone
    await m.ctlOk('clone orig base cl');
    const c = new Model('cl', 1 * M, 4 * K);
    c.data = Buffer.from(snap);
    await c.verify('fresh clone');
    expect((await stat(m.disk('cl'))).size).toBe(1 * M);
    const cs = await m.diskStatus('cl');
    expect(cs).toMatchObject({ name: 'cl', size: 1 * M, blockSize: 4 * K, clonedFrom: 'orig@base' });
    // Writes to the clone: origin and snapshot unchanged.
    await c.write(0, randomBuffer(32, 700_000));
    await c.write(900_000, randomBuffer(33, 5));
    await c.verify();
    await d.verify('origin after clone writes');
    expectSame(await readAll(m.snap('orig', 'base')), snap, 'orig@base after clone writes');
    // Writes to the origin: the clone unchanged.
    await d.write(400_000, randomBuffer(34, 300_000));
    await c.verify('clone after origin writes');
    // A snapshot of the clone, and rollback of the clone, work like on any disk.
    await m.ctlOk('snapshot cl cs1');
    const cs1 = Buffer.from(c.data);
    await c.write(1, randomBuffer(35, 4));
    await m.ctlOk('rollback cl cs1');
    c.data = cs1;
    await c.verify('clone after its own rollback');
    await m.ctlOk('delete-snapshot cl cs1');

    // The snapshot (and the origin) cannot go while the clone depends on them.
    expect(await m.ctl('delete-snapshot orig base')).toEqual({ ok: false, code: 'EBUSY' });
    expect(await m.ctl('delete orig -r')).toEqual({ ok: false, code: 'EBUSY' });
    expect((await m.history()).pop()!.message).toMatch(/clone|cl/);
    expectSame(await readAll(m.snap('orig', 'base')), snap, 'orig@base after refused deletes');
    await c.verify('clone after refused deletes');
    // Once the clone is gone, they can.
    await m.ctlOk('delete cl');
    await m.ctlOk('delete-snapshot orig base');
    await d.verify('origin at the end');
  });

  it('rollback to an older snapshot keeps newer snapshots and a clone of them; clones of clones work', async () => {
    const d = await Model.create('rc', 1 * M);
    await d.write(0, randomBuffer(50, 1 * M));
    await m.ctlOk('snapshot rc s1');
    const s1 = Buffer.from(d.data);
    await d.write(64 * K + 1, randomBuffer(51, 300 * K));
    await m.ctlOk('snapshot rc s2');
    const s2 = Buffer.from(d.data);
    await m.ctlOk('clone rc s2 rc-c');
    await d.write(0, randomBuffer(52, 100 * K));
    await m.ctlOk('rollback rc s1');
    d.data = Buffer.from(s1);
    await d.verify('rc after rollback to s1');
    expectSame(await readAll(m.snap('rc', 's2')), s2, 'rc@s2 after rollback to s1');
    expectSame(await readAll(m.disk('rc-c')), s2, 'clone of rc@s2 after rollback of rc to s1');
    // A clone of the clone.
    await writeAt(m.disk('rc-c'), 5, randomBuffer(53, 10));
    const c1 = Buffer.from(s2);
    randomBuffer(53, 10).copy(c1, 5);
    await m.ctlOk('snapshot rc-c cs');
    await m.ctlOk('clone rc-c cs rc-cc');
    await writeAt(m.disk('rc-c'), 5, randomBuffer(54, 10));
    expectSame(await readAll(m.disk('rc-cc')), c1, 'clone of a clone');
    expect((await m.diskStatus('rc-cc'))!.clonedFrom).toBe('rc-c@cs');
    await m.ctlOk('delete rc-cc');
    await m.ctlOk('delete rc-c -r');
    await m.ctlOk('delete rc -r');
  });

  it('a snapshot keeps the size it had; rollback restores the size', async () => {
    const d = await Model.create('sz', 1 * M);
    await d.write(0, randomBuffer(60, 1 * M));
    await m.ctlOk('snapshot sz big');
    const big = Buffer.from(d.data);
    await m.ctlOk('resize sz 256K');
    await m.ctlOk('snapshot sz small');
    expect((await stat(m.snap('sz', 'big'))).size).toBe(1 * M);
    expect((await stat(m.snap('sz', 'small'))).size).toBe(256 * K);
    expectSame(await readAll(m.snap('sz', 'big')), big, 'sz@big after shrink');
    await m.ctlOk('resize sz 2M');
    expectSame(await readAll(m.disk('sz')), Buffer.concat([big.subarray(0, 256 * K), Buffer.alloc(2 * M - 256 * K)]), 'sz regrown');
    await m.ctlOk('rollback sz big');
    expect((await stat(m.disk('sz'))).size).toBe(1 * M);
    expectSame(await readAll(m.disk('sz')), big, 'sz rolled back to big');
    await m.ctlOk('rollback sz small');
    expect((await stat(m.disk('sz'))).size).toBe(256 * K);
    expectSame(await readAll(m.disk('sz')), big.subarray(0, 256 * K), 'sz rolled back to small');
    await m.ctlOk('delete sz -r');
  });

  it('deleting a disk with snapshots needs -r', async () => {
    const base = (await m.status()).pool.usedBytes;
    const d = await Model.create('withsnaps', 1 * M);
    await d.write(0, randomBuffer(40, 300 * K));
    await m.ctlOk('snapshot withsnaps a');
    await d.write(0, randomBuffer(41, 300 * K));
    await m.ctlOk('snapshot withsnaps b');
    expect((await m.status()).pool.usedBytes).toBeGreaterThan(base);
    expect(await m.ctl('delete withsnaps')).toEqual({ ok: false, code: 'EBUSY' });
    expect((await m.history()).pop()).toMatchObject({ result: 'error', command: 'delete withsnaps' });
    expect((await m.history()).pop()!.message).toMatch(/snapshot/);
    await d.verify('after a refused delete');
    await m.ctlOk('delete withsnaps -r');
    expect(await readdir(m.mp)).not.toContain('withsnaps');
    expect(await readdir(join(m.vdisk, 'snapshots'))).not.toContain('withsnaps');
    expect(await errnoOf(() => stat(m.snap('withsnaps', 'a')))).toBe('ENOENT');
    expect((await m.status()).pool.usedBytes).toBe(base);
    // The name is free again, with a fresh, empty disk.
    await m.ctlOk('create withsnaps 1M');
    expect((await readAll(m.disk('withsnaps'))).equals(Buffer.alloc(1 * M))).toBe(true);
    await m.ctlOk('delete withsnaps');
  });

  it.skipIf(noLoop)('ext4: a snapshot loop-mounted read-only shows the tree as it was', async () => {
    const { disk, tree: old } = await m.ext4WithTree('fs', '128M', 7, 'tree-old', 'live1');
    let lm: string;
    await m.ctlOk('snapshot fs before');

    // Change the live filesystem; apply the same changes to a host copy as the expected new tree.
    const expected = await m.scratch('tree-new');
    await shOk(`cp -a ${q(old)}/. ${q(expected)}/`);
    const extra = await m.scratch('tree-extra');
    await makeTree(extra, 8);
    const change = (dir: string): string =>
      `rm -r ${q(dir)}/dir1 && rm ${q(dir)}/dir0/file3.bin && head -c 100000 /dev/zero >> ${q(dir)}/dir2/file4.bin && ` +
      `cp -a ${q(extra)}/dir3 ${q(dir)}/added && echo changed > ${q(dir)}/README.txt`;
    await shOk(change(expected));
    lm = await m.loopMount(disk, 'live2');
    await shOk(change(lm));
    await m.loopUmount(lm);

    const sm = await m.loopMount(m.snap('fs', 'before'), 'snap', 'loop,ro,noload');
    const d1 = await sh(`diff -r -x lost+found ${q(old)} ${q(sm)}`);
    expect(d1.stdout + d1.stderr).toBe('');
    expect(d1.code).toBe(0);
    expect(Number((await shOk(`find ${q(sm)} -type f | wc -l`)).trim())).toBe(51);
    await m.loopUmount(sm);

    lm = await m.loopMount(disk, 'live3');
    const d2 = await sh(`diff -r -x lost+found ${q(expected)} ${q(lm)}`);
    expect(d2.stdout + d2.stderr).toBe('');
    expect(d2.code).toBe(0);
    await m.loopUmount(lm);
  });

  it('snapshots survive a remount', async () => {
    const before = await m.status();
    const sums = new Map<string, string>();
    for (const d of before.disks) {
      if (d.size > 256 * M) continue;
      sums.set(d.name, sha256(await readAll(m.disk(d.name))));
      for (const s of d.snapshots) sums.set(`${d.name}@${s.name}`, sha256(await readAll(m.snap(d.name, s.name))));
    }
    expect([...sums.keys()].filter((k) => k.includes('@')).length).toBeGreaterThanOrEqual(8);
    await m.remount();
    const after = await m.status();
    // The unmount sealed the blocks written in place (they got their checksums back): all else is as before.
    expect(after.checksums).toMatchObject({ enabled: true, damaged: 0, unverified: 0 });
    expect({ ...after, checksums: undefined, tableCache: undefined }).toEqual({ ...before, checksums: undefined, tableCache: undefined });
    for (const [key, sum] of sums) {
      const [disk, snap] = key.split('@') as [string, string | undefined];
      const p = snap ? m.snap(disk, snap) : m.disk(disk);
      expect(sha256(await readAll(p)), key).toBe(sum);
    }
    // Snapshot operations keep working after the remount.
    await m.ctlOk('delete-snapshot multi s2');
    expect((await m.diskStatus('multi'))!.snapshots.map((s) => s.name)).toEqual(['s0', 's1', 's3', 's4']);
    expect(sha256(await readAll(m.snap('multi', 's3')))).toBe(sums.get('multi@s3'));
  });
});
