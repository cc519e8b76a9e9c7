// Backups and restores on a real mount: the compacted copies in .vdisk/copies, the incremental images in
// .vdisk/deltas, restore methods 1 (.vdisk/import/NEW) and 2 (.vdisk/restore/DISK), and the CLI twins
// (backup/restore/verify) both offline and through the mount.

import { open, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  CLI,
  G,
  M,
  T,
  VdiskMount,
  loopAvailable,
  lsSize,
  q,
  randomBuffer,
  readRange,
  requireBuild,
  sh,
  sha256,
  shOk,
  teardownAll,
  vdiskfs,
  writeAt,
} from './helpers.js';
import {
  KiB,
  MiB,
  applyWrites,
  ddToFile,
  expectRandomReads,
  expectSameBytes,
  fileSha,
  imageSize,
  imageTables,
  listJson,
  parseHeader,
  readAll,
  touchedBlocks,
  type Write,
} from './backupHelpers.js';

const noLoop = !(await loopAvailable('backup.test.ts'));

let m: VdiskMount;
let work: string;

beforeAll(async () => {
  requireBuild();
  m = await VdiskMount.create();
  work = await m.scratch('work');
});

afterAll(async () => {
  await teardownAll();
});

const copyOf = (disk: string, snap: string): string => join(m.vdisk, 'copies', disk, snap);
const deltaOf = (disk: string, base: string, snap: string): string => join(m.vdisk, 'deltas', disk, `${base}..${snap}`);
const importTo = (name: string): string => join(m.vdisk, 'import', name);
const restoreTo = (name: string): string => join(m.vdisk, 'restore', name);

/** dd an image file into a FUSE restore file; returns the dd result (exit code and stderr). */
const ddInto = (image: string, target: string) => sh(`dd if=${q(image)} of=${q(target)} bs=1M status=none`);

async function ddIntoOk(image: string, target: string): Promise<void> {
  const r = await ddInto(image, target);
  expect(r.code, `dd ${image} -> ${target}: ${r.stderr}`).toBe(0);
}

async function snapId(disk: string, snap: string): Promise<string> {
  const d = await m.diskStatus(disk);
  const s = d?.snapshots.find((x) => x.name === snap);
  if (!s) throw new Error(`no snapshot ${disk}@${snap}`);
  return s.id;
}

/** Scattered writes over a disk: unaligned, block-crossing, at offset 0 and at the very end. */
function scatteredWrites(size: number, blockSize: number, seed: number): Write[] {
  return [
    { offset: 0, length: 1000, seed: seed + 1 }, // first block, partial
    { offset: 3 * blockSize - 100, length: blockSize + 300, seed: seed + 2 }, // crosses two boundaries
    { offset: Math.floor(size / 3) + 12345, length: 5 * blockSize, seed: seed + 3 }, // a run, unaligned
    { offset: Math.floor(size / 2), length: 777 * KiB, seed: seed + 4 }, // larger aligned-start run
    { offset: Math.floor((size * 7) / 8) - 1, length: 2, seed: seed + 5 }, // 2 bytes across a boundary
    { offset: size - 4096 - 17, length: 4096 + 17, seed: seed + 6 }, // the very end of the disk
  ];
}

/**
 * Full image of one snapshot via the mount: the copy's size is the formula, every way of reading it gives
 * the same bytes, verify passes, the tables list exactly the used blocks, a restore via import/ gives a disk
 * identical to the snapshot.
 */
async function fullRoundTrip(disk: string, size: number, blockSize: number, seed: number): Promise<void> {
  await m.ctlOk(`create ${disk} ${size} block-size=${blockSize}`);
  const writes = scatteredWrites(size, blockSize, seed);
  await applyWrites(m.disk(disk), writes);
  const used = [...touchedBlocks(writes, blockSize)].sort((a, b) => a - b);
  expect((await m.diskStatus(disk))!.allocatedBytes).toBe(used.length * blockSize);
  await m.ctlOk(`snapshot ${disk} s1`);
  // The disk changes after the snapshot: the copy must not see it.
  await writeAt(m.disk(disk), 0, randomBuffer(seed + 99, 2 * blockSize));

  const copy = copyOf(disk, 's1');
  const expected = imageSize(used.length, 0, blockSize);
  expect(await lsSize(copy)).toBe(expected);
  expect(expected - used.length * blockSize).toBeLessThan(64 * KiB);

  const a = join(work, `${disk}-a.img`);
  const b = join(work, `${disk}-b.img`);
  const c = join(work, `${disk}-c.img`);
  expect((await ddToFile(copy, a, '1M')).code).toBe(0);
  expect((await ddToFile(copy, b, '1M')).code).toBe(0);
  await shOk(`cat ${q(copy)} > ${q(c)}`);
  const img = await readAll(a);
  expect(img.length).toBe(expected);
  expect(sha256(await readAll(b))).toBe(sha256(img));
  expect(sha256(await readAll(c))).toBe(sha256(img));
  // Odd block sizes and random offsets, tail first (the trailer needs every group CRC).
  await expectSameBytes(a, copy);
  const odd = join(work, `${disk}-odd.img`);
  expect((await ddToFile(copy, odd, '4097')).code).toBe(0);
  await expectSameBytes(a, odd);
  expect((await readRange(copy, expected - 64, 64)).equals(img.subarray(expected - 64))).toBe(true);
  await expectRandomReads(copy, img, 20, seed);

  const h = parseHeader(img);
  expect(h.magic).toBe('VDSKIMG\0');
  expect(h.kind).toBe(1);
  expect(h.blockSize).toBe(blockSize);
  expect(h.virtualSize).toBe(size);
  expect(h.slotCount).toBe(used.length);
  expect(h.zeroCount).toBe(0);
  expect(h.totalLength).toBe(expected);
  expect(h.snapId).toBe(await snapId(disk, 's1'));
  const { lbns, slotLbns } = imageTables(img);
  expect(lbns).toEqual(used);
  // Slots hold the snapshot's blocks (in the source's physical order: format version 2).
  expect(h.version).toBe(2);
  for (const i of [0, Math.floor(used.length / 2), used.length - 1]) {
    const blk = await readRange(m.snap(disk, 's1'), slotLbns![i]! * blockSize, blockSize);
    expect(img.subarray(h.dataOffset + i * blockSize, h.dataOffset + (i + 1) * blockSize).equals(blk), `slot ${i}`).toBe(true);
  }

  const v = await vdiskfs(['verify', a]);
  expect(v.code, v.stderr).toBe(0);
  expect(v.stdout).toMatch(/^ok: full image/);

  await ddIntoOk(a, importTo(`${disk}-r`));
  const st = (await m.diskStatus(`${disk}-r`))!;
  expect(st).toBeDefined();
  expect(st.size).toBe(size);
  expect(st.blockSize).toBe(blockSize);
  expect(st.allocatedBytes).toBe(used.length * blockSize);
  expect((st as unknown as { restoredFrom?: string }).restoredFrom).toBe(h.snapId);
  expect(await lsSize(m.disk(`${disk}-r`))).toBe(size);
  await expectSameBytes(m.disk(`${disk}-r`), m.snap(disk, 's1'));
}

describe('full images via the mount', () => {
  it('1G disk with 64K blocks: size formula, stable bytes, verify, restore via import/ equals the snapshot', async () => {
    await fullRoundTrip('big', 1 * G, 64 * KiB, 100);
  });

  it('64M disk with 4K blocks: same checks', async () => {
    await fullRoundTrip('small', 64 * M, 4 * KiB, 200);
  });

  it('16T disk with three 4K blocks: a 20548-byte image, restored ranges identical', async () => {
    await m.ctlOk('create huge 16T block-size=4K');
    const offs = [0, 8 * T + 40960, 16 * T - 4096];
    for (let i = 0; i < offs.length; i++) await writeAt(m.disk('huge'), offs[i]!, randomBuffer(300 + i, 4096));
    await m.ctlOk('snapshot huge s');
    const copy = copyOf('huge', 's');
    expect(await lsSize(copy)).toBe(20548);
    expect(imageSize(3, 0, 4096)).toBe(20548);
    const img = join(work, 'huge.img');
    expect((await ddToFile(copy, img)).code).toBe(0);
    expect((await readAll(img)).length).toBe(20548);
    expect(imageTables(await readAll(img)).lbns).toEqual(offs.map((o) => o / 4096));
    expect((await vdiskfs(['verify', img])).code).toBe(0);

    await ddIntoOk(img, importTo('huge-r'));
    const st = (await m.diskStatus('huge-r'))!;
    expect(st.size).toBe(16 * T);
    expect(st.allocatedBytes).toBe(3 * 4096);
    for (const o of offs) {
      // The written block and its neighbours (holes) read the same on both sides.
      const from = Math.max(0, o - 8192);
      const len = Math.min(16 * T, o + 4096 + 8192) - from;
      const got = await readRange(m.disk('huge-r'), from, len);
      const want = await readRange(m.snap('huge', 's'), from, len);
      expect(got.length).toBe(len);
      expect(got.equals(want), `range at ${o}`).toBe(true);
    }
  });

  it('image size is the used data plus small tables', async () => {
    await m.ctlOk('create sz 256M');
    // 4 MiB of data in 64 separate 64K blocks spread over the disk.
    for (let i = 0; i < 64; i++) await writeAt(m.disk('sz'), i * 4 * MiB + 65536, randomBuffer(400 + i, 65536));
    await m.ctlOk('snapshot sz s');
    const size = await lsSize(copyOf('sz', 's'));
    expect(size).toBe(imageSize(64, 0, 65536));
    expect(size - 64 * 65536).toBeGreaterThan(0);
    expect(size - 64 * 65536).toBeLessThan(64 * KiB);
    const h = parseHeader(await readRange(copyOf('sz', 's'), 0, 4096));
    expect(h.slotCount).toBe(64);
  });
});

describe('incremental images', () => {
  it('mon full + mon..tue delta (mount and CLI identical) applied via restore/ and --into equals tue', async () => {
    const bs = 64 * KiB;
    await m.ctlOk('create inc 64M');
    const disk = m.disk('inc');
    // Monday: blocks 0..9, 100..104, 1000
    await writeAt(disk, 0, randomBuffer(500, 10 * bs));
    await writeAt(disk, 100 * bs, randomBuffer(501, 5 * bs));
    await writeAt(disk, 1000 * bs + 5, randomBuffer(502, 100));
    await m.ctlOk('snapshot inc mon');
    const monImg = join(work, 'mon.img');
    expect((await ddToFile(copyOf('inc', 'mon'), monImg)).code).toBe(0);
    expect(parseHeader(await readAll(monImg)).slotCount).toBe(16);

    // Restore Monday as new disks (one for each way of applying the delta, and spares for refusals).
    for (const n of ['incA', 'incB', 'incC']) await ddIntoOk(monImg, importTo(n));
    await expectSameBytes(m.disk('incA'), m.snap('inc', 'mon'));

    // Tuesday: partial overwrite of block 3, new block 50 in a hole, a whole zero block over block 7
    // (becomes a hole), zeros over half of block 101 (stays data), and block 1000 unchanged.
    await writeAt(disk, 3 * bs + 100, randomBuffer(510, 200));
    await writeAt(disk, 50 * bs, randomBuffer(511, bs));
    await writeAt(disk, 7 * bs, Buffer.alloc(bs));
    await writeAt(disk, 101 * bs, Buffer.alloc(bs / 2));
    await m.ctlOk('snapshot inc tue');
    const tueId = await snapId('inc', 'tue');
    const monId = await snapId('inc', 'mon');

    const d1 = join(work, 'mon-tue.mount.img');
    const d2 = join(work, 'mon-tue.cli.img');
    expect((await ddToFile(deltaOf('inc', 'mon', 'tue'), d1)).code).toBe(0);
    const b = await vdiskfs(['backup', 'inc@tue', '--since', 'mon', '-o', d2, '--store', m.store]);
    expect(b.code, b.stderr).toBe(0);
    await expectSameBytes(d1, d2);
    const delta = await readAll(d1);
    const h = parseHeader(delta);
    expect(h.kind).toBe(2);
    expect(h.snapId).toBe(tueId);
    expect(h.baseSnapId).toBe(monId);
    const t = imageTables(delta);
    expect(t.lbns).toEqual([3, 50, 101]);
    expect(t.zeros).toEqual([7]);
    expect(delta.length).toBe(imageSize(3, 1, bs));
    expect(await lsSize(deltaOf('inc', 'mon', 'tue'))).toBe(delta.length);
    const v = await vdiskfs(['verify', d1]);
    expect(v.code, v.stderr).toBe(0);

    // Method 2 through the mount, and the CLI --into (through the mount as well).
    await ddIntoOk(d1, restoreTo('incA'));
    await expectSameBytes(m.disk('incA'), m.snap('inc', 'tue'));
    const r = await vdiskfs(['restore', d2, '--into', 'incB', '--store', m.store]);
    expect(r.code, r.stderr).toBe(0);
    await expectSameBytes(m.disk('incB'), m.snap('inc', 'tue'));
    const stA = (await m.diskStatus('incA'))!;
    expect((stA as unknown as { restoredFrom?: string }).restoredFrom).toBe(tueId);
    expect(stA.allocatedBytes).toBe((await m.diskStatus('inc'))!.allocatedBytes);

    // A chain: tue..wed onto the disk that now holds tue.
    await writeAt(disk, 9 * bs, Buffer.alloc(bs));
    await writeAt(disk, 1020 * bs - 10, randomBuffer(520, 20));
    await m.ctlOk('snapshot inc wed');
    const d3 = join(work, 'tue-wed.img');
    expect((await ddToFile(deltaOf('inc', 'tue', 'wed'), d3)).code).toBe(0);
    await ddIntoOk(d3, restoreTo('incA'));
    await expectSameBytes(m.disk('incA'), m.snap('inc', 'wed'));
    // An older base resolves by name too: mon..wed.
    const d4 = join(work, 'mon-wed.img');
    expect((await ddToFile(deltaOf('inc', 'mon', 'wed'), d4)).code).toBe(0);
    expect(imageTables(await readAll(d4))).toEqual({ lbns: [3, 50, 101, 1019, 1020], zeros: [7, 9] });

    // Refusals: each leaves the disk unchanged and the pool use unchanged.
    const refuse = async (image: string, target: string, why: string, viaCli = false): Promise<void> => {
      const before = await fileSha(m.disk(target));
      const used = (await m.status()).pool.usedBytes;
      const rr = await ddInto(image, restoreTo(target));
      expect(rr.code, `${why}: dd should fail`).not.toBe(0);
      if (viaCli) {
        const rc = await vdiskfs(['restore', image, '--into', target, '--store', m.store]);
        expect(rc.code, `${why}: CLI --into should fail`).toBe(4); // EXISTS, the mount's typed reply
        expect(rc.stderr).toMatch(/^vdiskfs: disk \S+ already has snapshot tue \(\S+\): this incremental image was applied already/);
      }
      expect(await fileSha(m.disk(target)), why).toBe(before);
      expect((await m.status()).pool.usedBytes, why).toBe(used);
    };
    // incA holds wed now, not mon.
    await refuse(d1, 'incA', 'disk holds a later snapshot', true);
    // The original disk was never restored.
    await refuse(d1, 'inc', 'original disk');
    // incC was restored from mon but then written.
    await writeAt(m.disk('incC'), 5, Buffer.from('changed'));
    await refuse(d1, 'incC', 'written since its restore');
    // A disk of another block size that never held mon.
    await m.ctlOk('create other4k 64M block-size=4K');
    await refuse(d1, 'other4k', 'other disk');

    // A delta is never a new disk.
    const ri = await ddInto(d1, importTo('fromdelta'));
    expect(ri.code).not.toBe(0);
    const rc = await vdiskfs(['restore', d1, '--as', 'fromdelta2', '--store', m.store]);
    expect(rc.code).not.toBe(0);
    const names = (await m.status()).disks.map((x) => x.name);
    expect(names).not.toContain('fromdelta');
    expect(names).not.toContain('fromdelta2');
    expect((await sh(`test -e ${q(m.disk('fromdelta'))}`)).code).not.toBe(0);
  });
});

describe('a delta onto a disk that no longer holds its base (issue 21)', () => {
  it('resize away and back: the CLI refuses with the reason, the disk is unchanged; a fresh full restore takes it', async () => {
    await m.ctlOk('create d21 64M');
    await writeAt(m.disk('d21'), 50 * MiB, randomBuffer(2100, 2 * MiB), true);
    await m.ctlOk('snapshot d21 s1');
    await writeAt(m.disk('d21'), 0, randomBuffer(2101, MiB), true);
    await m.ctlOk('snapshot d21 s2');
    const full = join(work, 'd21-s1.img');
    const delta = join(work, 'd21-s1-s2.img');
    for (const [args, what] of [[['backup', 'd21@s1', '-o', full], 'full'], [['backup', 'd21@s2', '--since', 's1', '-o', delta], 'delta']] as const) {
      const b = await vdiskfs([...args, '--store', m.store]);
      expect(b.code, `${what}: ${b.stderr}`).toBe(0);
    }
    const r1 = await vdiskfs(['restore', full, '--as', 'r21', '--store', m.store]);
    expect(r1.code, r1.stderr).toBe(0);
    expect((await m.diskStatus('r21') as unknown as { restoredFrom?: string }).restoredFrom).toBe(await snapId('d21', 's1'));
    await m.ctlOk('resize r21 32M'); // the data at 50M is gone
    await m.ctlOk('resize r21 64M');
    expect((await m.diskStatus('r21') as unknown as { restoredFrom?: string }).restoredFrom).toBeUndefined();
    const before = await fileSha(m.disk('r21'));
    const rc = await vdiskfs(['restore', delta, '--into', 'r21', '--store', m.store]);
    expect(rc.code).not.toBe(0);
    expect(rc.code).toBe(2);
    expect(rc.stderr).toMatch(/disk r21 changed since its snapshot s1, the base of this incremental image .*add --force to roll it back to s1 first/);
    expect(await fileSha(m.disk('r21'))).toBe(before);
    const history = (await readFile(join(m.vdisk, 'history'), 'utf8')).trim().split('\n');
    expect(history.at(-1)).toMatch(/\terror\trestore into r21\t.*changed since its snapshot s1/);
    // What the user does next: the full image again, then the delta, gives exactly s2.
    for (const img of [full, delta]) {
      const r = await vdiskfs(['restore', img, '--into', 'r21', '--store', m.store]);
      expect(r.code, r.stderr).toBe(0);
    }
    await expectSameBytes(m.disk('r21'), m.snap('d21', 's2'));
  });
});

describe('restore into the original disk (method 2, full image)', () => {
  it('after changes gives the snapshot exactly; refused with EBUSY while the disk is open', async () => {
    const bs = 64 * KiB;
    await m.ctlOk('create orig 128M');
    const disk = m.disk('orig');
    await writeAt(disk, 0, randomBuffer(600, 3 * bs));
    await writeAt(disk, 40 * bs + 1, randomBuffer(601, 2 * bs));
    await m.ctlOk('snapshot orig s');
    const img = join(work, 'orig.img');
    expect((await ddToFile(copyOf('orig', 's'), img)).code).toBe(0);
    const allocAtSnap = (await m.diskStatus('orig'))!.allocatedBytes;

    // Change: overwrite, fill a hole, zero a block, grow data near the end.
    await writeAt(disk, bs + 5, randomBuffer(602, 1000));
    await writeAt(disk, 20 * bs, randomBuffer(603, 3 * bs));
    await writeAt(disk, 0, Buffer.alloc(bs));
    await writeAt(disk, 128 * M - 10, randomBuffer(604, 10));
    expect((await sh(`cmp -s ${q(disk)} ${q(m.snap('orig', 's'))}`)).code).toBe(1);
    const changed = await fileSha(disk);

    // Held open by this process: refused with EBUSY, unchanged.
    const fh = await open(disk, 'r');
    try {
      const r = await ddInto(img, restoreTo('orig'));
      expect(r.code).not.toBe(0);
      expect(r.stderr).toMatch(/busy/i);
      const rc = await vdiskfs(['restore', img, '--into', 'orig', '--store', m.store]);
      expect(rc.code).toBe(5);
    } finally {
      await fh.close();
    }
    // Held open by another process (a shell redirect).
    const holder = await shOk(`sleep 30 < ${q(disk)} > /dev/null 2>&1 & echo $!`);
    const hpid = Number(holder.trim());
    try {
      await new Promise((res) => setTimeout(res, 200));
      const r = await ddInto(img, restoreTo('orig'));
      expect(r.code).not.toBe(0);
      expect(r.stderr).toMatch(/busy/i);
    } finally {
      try {
        process.kill(hpid, 'SIGTERM');
      } catch {
        /* gone */
      }
    }
    // Wait until the disk is closed (the sleep's fd goes away with it).
    for (let i = 0; i < 100; i++) {
      if ((await sh(`kill -0 ${hpid}`)).code !== 0) break;
      await new Promise((res) => setTimeout(res, 50));
    }
    await new Promise((res) => setTimeout(res, 100));
    expect(await fileSha(disk)).toBe(changed);

    await ddIntoOk(img, restoreTo('orig'));
    await expectSameBytes(disk, m.snap('orig', 's'));
    expect((await m.diskStatus('orig'))!.allocatedBytes).toBe(allocAtSnap);
    // The snapshot itself is untouched and the disk is writable again afterwards.
    await writeAt(disk, 0, Buffer.from('after'));
    expect((await readRange(disk, 0, 5)).toString()).toBe('after');
  });
});

describe('CLI pipes', () => {
  let p: VdiskMount;
  let w: string;
  let mountFull: string;
  let mountDelta: string;
  const cli = `${q(process.execPath)} ${q(CLI)}`;

  beforeAll(async () => {
    p = await VdiskMount.create();
    w = await p.scratch('w');
    await p.ctlOk('create db 128M');
    await applyWrites(p.disk('db'), scatteredWrites(128 * M, 64 * KiB, 700));
    await p.ctlOk('snapshot db s');
    await writeAt(p.disk('db'), 64 * M, randomBuffer(710, 200_000));
    await writeAt(p.disk('db'), 0, Buffer.alloc(65536));
    await p.ctlOk('snapshot db s2');
    mountFull = join(w, 'mount-full.img');
    mountDelta = join(w, 'mount-delta.img');
    expect((await ddToFile(join(p.vdisk, 'copies/db/s'), mountFull)).code).toBe(0);
    expect((await ddToFile(join(p.vdisk, 'deltas/db/s..s2'), mountDelta)).code).toBe(0);
    await p.unmount();
  });

  afterAll(async () => {
    await p?.teardown();
  });

  it('offline: backup to a file/stdout equals the mount images; restore from a file and from stdin', async () => {
    const S = q(p.store);
    const offFull = join(w, 'off-full.img');
    const offDelta = join(w, 'off-delta.img');
    await shOk(`${cli} backup db@s --store ${S} > ${q(offFull)}`);
    await shOk(`${cli} backup db@s2 --since s --store ${S} -o ${q(offDelta)}`);
    await expectSameBytes(offFull, mountFull);
    await expectSameBytes(offDelta, mountDelta);
    // Restore from a file and from stdin (a file redirect: the store can be opened by one process at a time).
    await shOk(`${cli} restore ${q(offFull)} --as x --store ${S}`);
    await shOk(`${cli} restore - --as x2 --store ${S} < ${q(offFull)}`);
    await shOk(`cat ${q(offDelta)} | ${cli} restore - --into x2 --store ${S}`);
    const names = (await listJson(p.store)).map((d) => d.name);
    expect(names).toEqual(expect.arrayContaining(['db', 'x', 'x2']));
    const vv = await sh(`${cli} verify - < ${q(offDelta)}`);
    expect(vv.code, vv.stderr).toBe(0);
    expect(vv.stdout).toMatch(/delta image/);
  });

  // Both processes want the store's LevelDB: restore opens it only after the first bytes arrive (the
  // backup has it by then), spools the stream while the backup holds it, and restores once it is free.
  it('offline: backup | restore - --as (same unmounted store)', async () => {
    const S = q(p.store);
    // Three tries, all of which must work (one lucky interleaving must not hide a race).
    for (const n of ['xp1', 'xp2', 'xp3']) {
      const pipe = await sh(`set -o pipefail; ${cli} backup db@s --store ${S} | ${cli} restore - --as ${n} --store ${S}`);
      expect(pipe.code, pipe.stderr).toBe(0);
    }
  });

  it('through the mount: backup | restore - --as, CLI image identical to the mount copy, restored disks equal', async () => {
    const S = q(p.store);
    await p.mount();
    const viaMount = join(w, 'cli-mounted.img');
    await shOk(`${cli} backup db@s --store ${S} > ${q(viaMount)}`);
    await expectSameBytes(viaMount, mountFull);
    const viaMountDelta = join(w, 'cli-mounted-delta.img');
    await shOk(`${cli} backup db@s2 --since s --store ${S} > ${q(viaMountDelta)}`);
    await expectSameBytes(viaMountDelta, mountDelta);
    const mpipe = await sh(`set -o pipefail; ${cli} backup db@s --store ${S} | ${cli} restore - --as y --store ${S}`);
    expect(mpipe.code, mpipe.stderr).toBe(0);
    const dpipe = await sh(`set -o pipefail; ${cli} backup db@s2 --since s --store ${S} | ${cli} restore - --into y --store ${S}`);
    expect(dpipe.code, dpipe.stderr).toBe(0);
    await expectSameBytes(p.disk('y'), p.snap('db', 's2'));
    // The disks restored offline by the previous test.
    await expectSameBytes(p.disk('x'), p.snap('db', 's'));
    await expectSameBytes(p.disk('x2'), p.snap('db', 's2'));
  });
});

describe('ext4 through a backup', () => {
  it.skipIf(noLoop)('mkfs.ext4, copy a tree, snapshot, backup, restore as a new disk, the tree is identical', async () => {
    const { tree } = await m.ext4WithTree('fs', '256M', 7, 'tree', 'fsloop');
    await m.ctlOk('snapshot fs s');
    const img = join(work, 'fs.img');
    const b = await vdiskfs(['backup', 'fs@s', '-o', img, '--store', m.store]);
    expect(b.code, b.stderr).toBe(0);
    const size = (await readAll(img)).length;
    expect(size).toBeLessThan(64 * M); // only the used blocks
    expect(size).toBe(await lsSize(copyOf('fs', 's')));
    expect((await vdiskfs(['verify', img])).code).toBe(0);
    const r = await vdiskfs(['restore', img, '--as', 'fsr', '--store', m.store]);
    expect(r.code, r.stderr).toBe(0);
    await expectSameBytes(m.disk('fsr'), m.snap('fs', 's'));
    const fsck = await sh(`e2fsck -fn ${q(m.disk('fsr'))}`);
    expect(fsck.code, fsck.stdout + fsck.stderr).toBe(0);
    const lr = await m.loopMount(m.disk('fsr'), 'fsrloop', 'loop,ro');
    const diff = await sh(`diff -r -x lost+found ${q(tree)} ${q(lr)}`);
    expect(diff.stdout + diff.stderr).toBe('');
    expect(diff.code).toBe(0);
    expect(Number((await shOk(`find ${q(lr)} -type f -name 'file*.bin' | wc -l`)).trim())).toBe(50);
    await m.loopUmount(lr);
  });
});
