// The FUSE 3 edge, really mounted: discard (fstrim through ext4 on a loop device, fallocate on a disk with a
// snapshot), SEEK_DATA/SEEK_HOLE against the tables, rendered files that read like files, failed mounts.

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { K, M, VdiskMount, duBytes, expectSame, isMountpoint, loopAvailable, q, randomBuffer, readRange, requireBuild, sh, shOk, teardownAll, vdiskfs, writeAt } from './helpers.js';

const noLoop = !(await loopAvailable('fuse3.test.ts'));
const BS = 64 * K;

let m: VdiskMount;

beforeAll(async () => {
  requireBuild();
  m = await VdiskMount.create();
});

afterAll(async () => {
  await teardownAll();
});

/** lseek(fd, off, SEEK_DATA / SEEK_HOLE) for each offset, in a python3 child: the offset or 'ENXIO'. */
async function seeks(file: string, offsets: number[], whence: 'DATA' | 'HOLE'): Promise<(number | 'ENXIO')[]> {
  const py = `
import os, sys, errno
fd = os.open(sys.argv[1], os.O_RDONLY)
for a in sys.argv[2:]:
    try:
        print(os.lseek(fd, int(a), os.SEEK_${whence}))
    except OSError as e:
        print(errno.errorcode[e.errno])
`;
  const out = await shOk(`python3 -c ${q(py)} ${q(file)} ${offsets.join(' ')}`);
  return out.trim().split('\n').map((l) => (/^\d+$/.test(l) ? Number(l) : (l as 'ENXIO')));
}

/** The errno name of fallocate(1) with these arguments ('' when it succeeds). */
async function fallocate(args: string): Promise<string> {
  const r = await sh(`fallocate ${args}`);
  if (r.code === 0) return '';
  return /not supported|unsupported/.test(r.stderr) ? 'EOPNOTSUPP' : r.stderr.includes('Read-only file system') ? 'EROFS' : r.stderr.includes('Bad file descriptor') ? 'EBADF' : r.stderr.trim();
}

describe('discard', () => {
  it.skipIf(noLoop)('fstrim of an ext4 on a loop-mounted disk returns the deleted files\' blocks', async () => {
    await m.ctlOk('create trim 256M');
    const disk = m.disk('trim');
    await shOk(`mkfs.ext4 -q -F -E nodiscard ${q(disk)}`);
    const lm = await m.loopMount(disk, 'trim-loop');
    await shOk(`dd if=/dev/urandom of=${q(lm)}/big bs=1M count=48 status=none conv=fsync`);
    const full = await duBytes(disk);
    expect(full).toBeGreaterThan(48 * M);
    await shOk(`rm ${q(lm)}/big && sync`);
    expect(await duBytes(disk)).toBeGreaterThan(48 * M); // deleting frees nothing by itself
    const r = await sh(`fstrim -v ${q(lm)}`);
    expect(r.code, r.stderr).toBe(0);
    await m.loopUmount(lm);
    expect(await duBytes(disk)).toBeLessThan(full - 40 * M);
    const fsck = await sh(`e2fsck -fn ${q(disk)}`);
    expect(fsck.code, fsck.stdout + fsck.stderr).toBe(0);
  });

  it('a hole punched in a disk with a snapshot: the disk reads zeros and shrinks, the snapshot is unchanged', async () => {
    await m.ctlOk('create punch 8M');
    const disk = m.disk('punch');
    const data = randomBuffer(12, 4 * M);
    await writeAt(disk, 0, data, true);
    await m.ctlOk('snapshot punch s');
    const snap = m.snap('punch', 's');
    const before = await duBytes(disk);
    const off = 3 * BS + 123;
    const len = M + 77;
    expect(await fallocate(`-p -o ${off} -l ${len} ${q(disk)}`)).toBe('');
    const want = Buffer.from(data);
    want.fill(0, off, off + len);
    expectSame(await readRange(disk, 0, 4 * M), want, 'disk after punch');
    expectSame(await readRange(snap, 0, 4 * M), data, 'snapshot after punch');
    expect(await duBytes(disk)).toBeLessThanOrEqual(before - (len - 2 * BS));
    // ZERO_RANGE (with and without KEEP_SIZE inside the disk) does the same.
    expect(await fallocate(`-z -o ${2 * M + 5} -l ${BS * 3} ${q(disk)}`)).toBe('');
    want.fill(0, 2 * M + 5, 2 * M + 5 + BS * 3);
    expectSame(await readRange(disk, 0, 4 * M), want, 'disk after zero range');
    expectSame(await readRange(snap, 0, 4 * M), data, 'snapshot after zero range');
    // Other modes, and any mode on a snapshot or a control file: a clear errno, nothing changes.
    expect(await fallocate(`-o 0 -l 4096 ${q(disk)}`)).toBe('EOPNOTSUPP');
    expect(await fallocate(`-p -o 0 -l 4096 ${q(snap)}`)).toMatch(/EROFS|EBADF/);
    expect(await fallocate(`-p -o 0 -l 4096 ${q(join(m.mp, '.vdisk', 'ctl'))}`)).toBe('EOPNOTSUPP');
    expectSame(await readRange(disk, 0, 4 * M), want, 'disk after refused fallocates');
    // The punched disk is what its status says after a remount too.
    await m.remount();
    expectSame(await readRange(disk, 0, 4 * M), want, 'disk after remount');
    expectSame(await readRange(snap, 0, 4 * M), data, 'snapshot after remount');
  });
});

describe('holes', () => {
  it('SEEK_DATA / SEEK_HOLE at odd offsets follow the tables of a disk, its snapshot and a clone', async () => {
    await m.ctlOk('create holes 256M');
    const disk = m.disk('holes');
    // data in blocks 2..3 (partly), 100 and 4095 (the last)
    await writeAt(disk, 2 * BS + 7, Buffer.alloc(BS, 1));
    await writeAt(disk, 100 * BS + 4095, Buffer.alloc(10, 2));
    await writeAt(disk, 256 * M - 3, Buffer.alloc(3, 3), true);
    const offs = [0, 1, 2 * BS - 1, 2 * BS + 5, 3 * BS + 1, 4 * BS + 17, 99 * BS + 3, 100 * BS + 1, 101 * BS + 9, 256 * M - BS - 1, 256 * M - 1, 256 * M];
    expect(await seeks(disk, offs, 'DATA')).toEqual([2 * BS, 2 * BS, 2 * BS, 2 * BS + 5, 3 * BS + 1, 100 * BS, 100 * BS, 100 * BS + 1, 256 * M - BS, 256 * M - BS, 256 * M - 1, 'ENXIO']);
    expect(await seeks(disk, offs, 'HOLE')).toEqual([0, 1, 2 * BS - 1, 4 * BS, 4 * BS, 4 * BS + 17, 99 * BS + 3, 101 * BS, 101 * BS + 9, 256 * M - BS - 1, 256 * M, 'ENXIO']);

    // snapshot, then punch block 100 and write block 7: the snapshot keeps its map, the disk has the new one
    await m.ctlOk('snapshot holes s');
    await shOk(`fallocate -p -o ${100 * BS} -l ${BS} ${q(disk)}`);
    await writeAt(disk, 7 * BS + 3, Buffer.alloc(5, 4), true);
    expect(await seeks(disk, [4 * BS + 1, 8 * BS], 'DATA')).toEqual([7 * BS, 256 * M - BS]);
    expect(await seeks(m.snap('holes', 's'), [4 * BS + 1, 100 * BS + 3], 'DATA')).toEqual([100 * BS, 100 * BS + 3]);

    // a clone reads its backing's map until it writes or punches its own
    await m.ctlOk('clone holes s c');
    const clone = m.disk('c');
    expect(await seeks(clone, [1, 4 * BS, 100 * BS + 9], 'DATA')).toEqual([2 * BS, 100 * BS, 100 * BS + 9]);
    await shOk(`fallocate -p -o ${2 * BS} -l ${2 * BS} ${q(clone)}`);
    expect(await seeks(clone, [1], 'DATA')).toEqual([100 * BS]);
    expect(await seeks(clone, [100 * BS + 9], 'HOLE')).toEqual([101 * BS]);

    // sparse-aware copy: only the data is read, the copy is as sparse and identical
    const copy = join(await m.scratch('sparse'), 'holes.img');
    await shOk(`cp --sparse=always ${q(disk)} ${q(copy)}`);
    expect(await duBytes(copy)).toBeLessThan(4 * BS * 4);
    const cmp = await sh(`cmp ${q(disk)} ${q(copy)}`);
    expect(cmp.code, cmp.stdout + cmp.stderr).toBe(0);
  });
});

describe('rendered files', () => {
  it('status, status.json and history have their real size: wc -c, tail -n 1 and stat agree with cat', async () => {
    await m.ctlOk('create r 1M');
    for (const name of ['status', 'status.json', 'history']) {
      const f = join(m.mp, '.vdisk', name);
      const text = await shOk(`cat ${q(f)}`);
      expect(text.length, name).toBeGreaterThan(0);
      expect(Number((await shOk(`wc -c < ${q(f)}`)).trim()), `wc -c ${name}`).toBe(Buffer.byteLength(text));
      expect(Number((await shOk(`stat -c %s ${q(f)}`)).trim()), `stat ${name}`).toBe(Buffer.byteLength(text));
      const lines = text.trimEnd().split('\n');
      expect((await shOk(`tail -n 1 ${q(f)}`)).trimEnd(), `tail ${name}`).toBe(lines[lines.length - 1]);
    }
  });
});

describe('failed mounts', () => {
  it('an unknown -o option or a busy mountpoint: non-zero exit with the reason, no mount, no store left', async () => {
    const scratch = await m.scratch('failed');
    const mp = join(scratch, 'mp');
    await shOk(`mkdir -p ${q(mp)}`);
    const store = join(scratch, 'new-store');
    const r = await vdiskfs(['mount', mp, '--store', store, '-o', 'no_such_option_xyz']);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/unknown option.*no_such_option_xyz/);
    expect(r.stderr).toMatch(/vdiskfs: cannot mount/);
    expect(await isMountpoint(mp)).toBe(false);
    expect(existsSync(store)).toBe(false);
    // The mountpoint of the running mount: refused, the running mount keeps working.
    const r2 = await vdiskfs(['mount', m.mp, '--store', store]);
    expect(r2.code).not.toBe(0);
    expect(r2.stderr).toMatch(/vdiskfs: cannot mount .*mountpoint is in use/);
    expect(existsSync(store)).toBe(false);
    expect((await m.status()).disks.length).toBeGreaterThan(0);
  });
});
