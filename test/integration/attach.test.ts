// Backup images used without restoring (issue 18): `attach` shows a full image and its deltas as a
// read-only disk file at .vdisk/attached/<name>; ext4 inside it loop-mounts read-only and its files come
// back with cp; damaged image data is EIO at that block only; bad chains and relative paths are refused.

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { CLI, M, VdiskMount, errnoOf, loopAvailable, makeTree, q, readRange, requireBuild, sh, sha256Range, shOk, teardownAll, vdiskfs } from './helpers.js';
import { existsSync } from 'node:fs';
import { decodeHeader } from '../../src/image/header.js';

const noLoop = !(await loopAvailable('attach.test.ts'));

let m: VdiskMount;
/** The images of fs@s1 (full) and fs@s1..s2 made by the first test, for the CLI test. */
let images: { full: string; delta: string } | undefined;

beforeAll(async () => {
  requireBuild();
  m = await VdiskMount.create();
});

afterAll(async () => {
  await teardownAll();
});

describe('attach', () => {
  it.skipIf(noLoop)('a full image and a delta attach as the newer snapshot: same bytes, ext4 tree identical, holes and du truthful', async () => {
    const { disk, tree: tree1 } = await m.ext4WithTree('fs', '128M', 3, 'tree1', 'l1');
    let lm: string;
    await m.ctlOk('snapshot fs s1');
    const tree2 = await m.scratch('tree2');
    await makeTree(tree2, 4);
    lm = await m.loopMount(disk, 'l2');
    await shOk(`rm -rf ${q(lm)}/dir1 && mkdir ${q(lm)}/more && cp -a ${q(tree2)}/. ${q(lm)}/more/`);
    await m.loopUmount(lm);
    await m.ctlOk('snapshot fs s2');

    const out = await m.scratch('images');
    const full = join(out, 'fs-s1.vdimg');
    const delta = join(out, 'fs-s1-s2.vdimg');
    await shOk(`dd if=${q(join(m.vdisk, 'copies/fs/s1'))} of=${q(full)} bs=1M status=none`);
    await shOk(`dd if=${q(join(m.vdisk, 'deltas/fs/s1..s2'))} of=${q(delta)} bs=1M status=none`);

    images = { full, delta };
    // backups through the mount are in the history, with the image's identity
    const history = await readFile(join(m.vdisk, 'history'), 'utf8');
    expect(history).toMatch(/\tok\tbackup fs@s1\tfull image of fs@s1 \([0-9a-f-]+\): \d+ bytes read through the mount/);
    expect(history).toMatch(/\tok\tbackup fs@s2 since s1\tdelta image of fs@s1\.\.s2 \([0-9a-f-]+ on base [0-9a-f-]+\)/);
    await m.ctlOk(`attach a ${full} ${delta}`);
    const att = join(m.vdisk, 'attached/a');
    const snap = join(m.vdisk, 'snapshots/fs/s2');
    expect((await readFile(join(m.vdisk, 'history'), 'utf8'))).toMatch(/\tok\tattach a [^\n]*\tattached a: fs@s2/);
    expect(await shOk(`ls ${q(join(m.vdisk, 'attached'))}`)).toBe('a\n');
    expect(await sha256Range(att, 0, 128 * M)).toBe(await sha256Range(snap, 0, 128 * M));
    // st_blocks: the blocks the chain holds, no more than the snapshot reads as data
    const du = Number((await shOk(`du -B1 ${q(att)}`)).split('\t')[0]);
    expect(du).toBeGreaterThan(0);
    expect(du).toBeLessThan(128 * M);
    // SEEK_HOLE finds a hole before the end (ext4 on a thin disk leaves most of it unwritten)
    const holes = await sh(`python3 -c "import os; f=os.open('${att}', os.O_RDONLY); print(os.lseek(f, 0, os.SEEK_HOLE))"`);
    expect(Number(holes.stdout.trim())).toBeLessThan(128 * M);

    const ro = await m.loopMount(att, 'la', 'loop,ro');
    const want = await m.loopMount(snap, 'ls', 'loop,ro');
    const diff = await sh(`diff -r ${q(want)} ${q(ro)}`);
    expect(diff.stdout + diff.stderr).toBe('');
    expect(diff.code).toBe(0);
    const count = await shOk(`find ${q(ro)}/more -type f -name 'file*.bin' | wc -l`);
    expect(Number(count.trim())).toBe(50);
    // busy while open: detach refused; after the loop unmount it detaches
    expect((await m.ctl('detach a')).code).toBe('EBUSY');
    await m.loopUmount(ro);
    await m.loopUmount(want);
    await m.ctlOk('detach a');
    expect(await shOk(`ls ${q(join(m.vdisk, 'attached'))}`)).toBe('');

    // a full image alone is s1; with two deltas it is s3
    lm = await m.loopMount(disk, 'l3');
    await shOk(`rm -rf ${q(lm)}/dir3 && cp -a ${q(tree1)}/dir0 ${q(lm)}/again`);
    await m.loopUmount(lm);
    await m.ctlOk('snapshot fs s3');
    const delta2 = join(out, 'fs-s2-s3.vdimg');
    await shOk(`dd if=${q(join(m.vdisk, 'deltas/fs/s2..s3'))} of=${q(delta2)} bs=1M status=none`);
    await m.ctlOk(`attach one ${full}`);
    await m.ctlOk(`attach three ${full} ${delta} ${delta2}`);
    expect(await shOk(`ls ${q(join(m.vdisk, 'attached'))}`)).toBe('one\nthree\n');
    expect(await sha256Range(join(m.vdisk, 'attached/one'), 0, 128 * M)).toBe(await sha256Range(join(m.vdisk, 'snapshots/fs/s1'), 0, 128 * M));
    const three = await m.loopMount(join(m.vdisk, 'attached/three'), 'l4', 'loop,ro');
    const s3 = await m.loopMount(join(m.vdisk, 'snapshots/fs/s3'), 'l5', 'loop,ro');
    const diff3 = await sh(`diff -r ${q(s3)} ${q(three)}`);
    expect(diff3.stdout + diff3.stderr).toBe('');
    expect(diff3.code).toBe(0);
    expect(await shOk(`ls ${q(three)}`)).toMatch(/again/);
    await m.loopUmount(three);
    await m.loopUmount(s3);
    await m.ctlOk('detach one');
    await m.ctlOk('detach three');
  });

  it('damage in an image is EIO at its blocks only; broken chains, relative paths and writes are refused', async () => {
    await m.ctlOk('create d2 16M');
    const data = Buffer.alloc(8 * M);
    for (let i = 0; i < data.length; i++) data[i] = (i * 31 + 7) % 251 || 1;
    const out = await m.scratch('images2');
    await writeFile(join(out, 'data'), data);
    await shOk(`dd if=${q(join(out, 'data'))} of=${q(m.disk('d2'))} bs=1M conv=notrunc status=none`);
    await m.ctlOk('snapshot d2 t1');
    await shOk(`dd if=/dev/urandom of=${q(m.disk('d2'))} bs=64K count=4 seek=20 conv=notrunc status=none`);
    await m.ctlOk('snapshot d2 t2');
    const full = join(out, 't1.vdimg');
    const delta = join(out, 't1-t2.vdimg');
    await shOk(`dd if=${q(join(m.vdisk, 'copies/d2/t1'))} of=${q(full)} bs=1M status=none`);
    await shOk(`dd if=${q(join(m.vdisk, 'deltas/d2/t1..t2'))} of=${q(delta)} bs=1M status=none`);

    // a delta alone, a delta before its full image, a relative path: refused, nothing attached
    expect((await m.ctl(`attach x ${delta}`)).code).toBe('EINVAL');
    expect((await m.ctl(`attach x ${delta} ${full}`)).code).toBe('EINVAL');
    expect((await m.ctl(`attach x images2/t1.vdimg`)).code).toBe('EINVAL');
    expect(await shOk(`ls ${q(join(m.vdisk, 'attached'))}`)).toBe('');
    expect((await readFile(join(m.vdisk, 'history'), 'utf8'))).toMatch(/\terror\tattach x [^\n]*starts with a full image/);

    // damage one checksum group of the full image (64 KiB blocks: 16 blocks per group)
    const img = await readFile(full);
    const h = decodeHeader(img.subarray(0, 4096));
    img[h.dataOffset + 5 * h.blockSize + 100]! ^= 0x55;
    const bad = join(out, 'bad.vdimg');
    await writeFile(bad, img);
    await m.ctlOk(`attach b ${bad} ${delta}`);
    const att = join(m.vdisk, 'attached/b');
    const lbnOf = (slot: number): number => Number(img.readBigUInt64BE(h.lbnTableOffset + 8 * slot));
    const lbn = lbnOf(5);
    expect(await errnoOf(() => readRange(att, lbn * h.blockSize, 4096))).toBe('EIO');
    // a block of the last group (not changed by the delta) reads right
    const other = lbnOf(h.slotCount - 1) >= 20 && lbnOf(h.slotCount - 1) < 24 ? lbnOf(h.slotCount - 2) : lbnOf(h.slotCount - 1);
    expect((await readRange(att, other * h.blockSize, h.blockSize)).equals(data.subarray(other * h.blockSize, (other + 1) * h.blockSize))).toBe(true);
    // read-only
    expect(await errnoOf(() => writeFile(att, 'x'))).toMatch(/EROFS|EACCES|EPERM/);
    await m.ctlOk('detach b');
    expect((await m.ctl('detach b')).code).toBe('ENOENT');
  });

  it.skipIf(noLoop)('the CLI: merge (to a file and to stdout), verify --against through the mount and offline, attach with relative paths, detach', async () => {
    const { full, delta } = images!;
    const out = join(full, '..');
    const merged = join(out, 'merged.vdimg');
    const mg = await vdiskfs(['merge', full, delta, '-o', merged, '--json']);
    expect(mg.code, mg.stderr).toBe(0);
    const mj = JSON.parse(mg.stdout) as { snapName: string; blocks: number };
    expect(mj.snapName).toBe('s2');
    expect(mj.blocks).toBeGreaterThan(0);
    // the merged image holds exactly fs@s2; the full image of s1 does not
    const ok = await vdiskfs(['verify', merged, '--against', 'fs@s2', '--store', m.store]);
    expect(ok.code, ok.stderr).toBe(0);
    expect(ok.stdout).toMatch(/holds what fs@s2 holds/);
    expect((await vdiskfs(['verify', delta, '--against', 'fs@s2', '--store', m.store])).code).toBe(0);
    const bad = await vdiskfs(['verify', full, '--against', 'fs@s2', '--store', m.store]);
    expect(bad.code).toBe(7);
    expect(bad.stderr).toMatch(/does not hold fs@s2: .*block \d+/);
    // merged to stdout, verified from stdin
    const cli = `${q(process.execPath)} ${q(CLI)}`;
    const piped = await sh(`set -o pipefail; ${cli} merge ${q(full)} ${q(delta)} | ${cli} verify -`);
    expect(piped.code, piped.stderr).toBe(0);
    // a wrong link: refused, nothing written
    const wrong = join(out, 'wrong.vdimg');
    const w = await vdiskfs(['merge', delta, full, '-o', wrong]);
    expect(w.code).toBe(2);
    expect(w.stderr).toMatch(/starts with a full image/);
    expect(existsSync(wrong)).toBe(false);
    // attach through the CLI resolves relative paths; detach
    const at = await sh(`cd ${q(out)} && ${cli} attach c fs-s1.vdimg fs-s1-s2.vdimg --store ${q(m.store)}`);
    expect(at.code, at.stderr).toBe(0);
    expect(await sha256Range(join(m.vdisk, 'attached/c'), 0, 128 * M)).toBe(await sha256Range(join(m.vdisk, 'snapshots/fs/s2'), 0, 128 * M));
    expect((await vdiskfs(['detach', 'c', '--store', m.store])).code).toBe(0);
    // offline: verify --against opens the store itself; attach needs the mount
    await m.unmount();
    try {
      const off = await vdiskfs(['verify', merged, '--against', 'fs@s2', '--store', m.store, '--json']);
      expect(off.code, off.stderr).toBe(0);
      expect((JSON.parse(off.stdout) as { ok: boolean; blocksCompared: number }).blocksCompared).toBeGreaterThan(0);
      const na = await vdiskfs(['attach', 'd', full, '--store', m.store]);
      expect(na.code).toBe(2);
      expect(na.stderr).toMatch(/mounted store only/);
    } finally {
      await m.mount();
    }
  });
});
