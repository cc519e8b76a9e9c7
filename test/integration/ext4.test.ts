// A real filesystem on a vdiskfs disk: mkfs.ext4, loop mount, copy a tree in, unmount everything, mount
// vdiskfs again, loop mount again, and the tree is identical.

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { M, VdiskMount, duBytes, loopAvailable, makeTree, q, requireBuild, sh, shOk, teardownAll } from './helpers.js';

/** Loop devices usable? (checked once, before the tests are collected) */
const noLoop = !(await loopAvailable('ext4.test.ts'));

let m: VdiskMount;

beforeAll(async () => {
  requireBuild();
  if (noLoop) return;
  m = await VdiskMount.create();
});

afterAll(async () => {
  await teardownAll();
});

describe('ext4 on a vdiskfs disk', () => {
  it.skipIf(noLoop)('mkfs.ext4, loop mount, copy a tree, remount everything, the tree is identical', async () => {
    await m.ctlOk('create fs 256M');
    const disk = m.disk('fs');
    await shOk(`mkfs.ext4 -q -F ${q(disk)}`);
    const afterMkfs = await duBytes(disk);
    expect(afterMkfs).toBeGreaterThan(0);
    expect(afterMkfs).toBeLessThan(64 * M); // thin: mkfs writes metadata only

    const tree = await m.scratch('tree');
    await makeTree(tree, 1);
    let lm = await m.loopMount(disk, 'loop1');
    await shOk(`cp -a ${q(tree)}/. ${q(lm)}/`);
    await m.loopUmount(lm);
    // The loop device went away with the umount (mount -o loop autoclears).
    expect((await sh(`losetup -j ${q(disk)}`)).stdout.trim()).toBe('');

    await m.remount();
    // The filesystem is clean after the round trip.
    const fsck = await sh(`e2fsck -fn ${q(disk)}`);
    expect(fsck.code, fsck.stdout + fsck.stderr).toBe(0);
    lm = await m.loopMount(disk, 'loop2');
    const diff = await sh(`diff -r -x lost+found ${q(tree)} ${q(lm)}`);
    expect(diff.stdout + diff.stderr).toBe('');
    expect(diff.code).toBe(0);
    // Sanity: the tree really is there (diff of two empty dirs would pass too).
    const count = await shOk(`find ${q(lm)} -type f -name 'file*.bin' | wc -l`);
    expect(Number(count.trim())).toBe(50);
    await m.loopUmount(lm);
  });
});
