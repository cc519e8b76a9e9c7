// A vdiskfs store whose block data is in Ceph (issue 20): `--block-store rados`, mounted as a user would
// against the local cluster that `npm run test:ceph` starts (scripts/test-ceph.sh sets VDISKFS_TEST_CEPH_CONF;
// skipped without it). dd, snapshot, the compacted copy, scrub and check --verify-data, an ext4 loop-mounted from a disk, a restore
// through import/, a remount without the flags (the store remembers its cluster), a SIGKILL mid-write
// followed by check and a read-back of everything acknowledged, and the errors for a wrong pool or a
// cluster that is not there.
import { dirname, join } from 'node:path';
import { mkdir, writeFile } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { M, REPO, VdiskMount, ddRead, ddWrite, loopAvailable, q, randomBuffer, requireBuild, sh, shOk, teardownAll, vdiskfs } from './helpers.js';

import { ddToFile } from './backupHelpers.js';

const conf = process.env.VDISKFS_TEST_CEPH_CONF;
// The daemons' lock in the cluster lapses 5 s after a daemon dies (default 30 s): the tests wait for it.
process.env.VDISKFS_RADOS_LEASE_S = '5';
const POOL = process.env.VDISKFS_TEST_RADOS_POOL ?? 'vdiskfs';
const noLoop = conf ? !(await loopAvailable('ceph.test.ts')) : true;

let m: VdiskMount;
let work: string;

beforeAll(async () => {
  if (!conf) return;
  requireBuild();
  m = await VdiskMount.create({ extraArgs: ['--rados-pool', POOL, '--ceph-conf', conf] });
  work = await m.scratch('work');
});
afterAll(teardownAll);

/** The store's id in the cluster (its object prefix), from the mount's status. */
async function storeId(mount = m): Promise<string> {
  const st = JSON.parse(await shOk(`cat ${q(join(mount.vdisk, 'status.json'))}`)) as { pool?: { rados?: { prefix: string } } };
  const prefix = st.pool?.rados?.prefix;
  expect(prefix).toMatch(/^vdiskfs\.[0-9a-f-]+$/);
  return prefix!;
}

/** The store's block objects in the pool (not its metadata's). */
async function objectCount(): Promise<number> {
  const prefix = await storeId();
  const ls = await shOk(`rados -c ${q(conf!)} -p ${q(POOL)} ls`);
  return ls.split('\n').filter((l) => l.startsWith(`${prefix}.`) && !l.startsWith(`${prefix}.meta.`)).length;
}

/** fn, again while it fails because the store's lock in the cluster is still held (a dead daemon's lease). */
async function whenUnlocked<T>(fn: () => Promise<T>, ok: (v: T) => boolean = () => true): Promise<T> {
  for (let i = 0; ; i++) {
    try {
      const v = await fn();
      if (ok(v) || i > 30) return v;
    } catch (e) {
      if (!/in use by another vdiskfs/.test(String(e)) || i > 30) throw e;
    }
    await new Promise((r) => setTimeout(r, 1000));
  }
}

describe.skipIf(!conf)('a store on Ceph RADOS (--block-store rados)', () => {
  it('dd, snapshot, compacted copy, restore, remount without flags: the bytes come back; objects follow the blocks', async () => {
    await m.ctlOk('create d 64M');
    const data = randomBuffer(20, 8 * M);
    expect((await ddWrite(work, m.disk('d'), 0, data, { bs: M, fsync: true })).code).toBe(0);
    expect(await objectCount()).toBe(128); // 8 MiB in 64 KiB blocks, one object each
    expect(await shOk(`cat ${q(join(m.vdisk, 'status'))}`)).toMatch(/block data in RADOS objects \(Ceph pool vdiskfs, objects vdiskfs\.[0-9a-f-]+\.\*/);
    await m.ctlOk('snapshot d s1');
    const image = join(work, 'd-s1.img');
    expect((await ddToFile(join(m.vdisk, 'copies/d/s1'), image)).code).toBe(0);
    // overwrite the first MiB: redirect-on-write, 16 new objects; the snapshot keeps the old ones
    const fresh = randomBuffer(21, M);
    expect((await ddWrite(work, m.disk('d'), 0, fresh, { bs: M, fsync: true })).code).toBe(0);
    expect(await objectCount()).toBe(144);
    // restore the image into a new disk through import/
    expect((await sh(`dd if=${q(image)} of=${q(join(m.vdisk, 'import/r'))} bs=1M status=none`)).code).toBe(0);
    expect((await ddRead(work, m.disk('r'), 0, 8 * M)).equals(data)).toBe(true);

    // scrub reads every block back from the cluster against its checksums
    await m.ctlOk('scrub d');
    let scrub = (await m.status()).checksums.scrub;
    for (let i = 0; i < 300 && !scrub?.finished; i++) {
      await new Promise((r) => setTimeout(r, 100));
      scrub = (await m.status()).checksums.scrub;
    }
    expect(scrub).toMatchObject({ finished: expect.any(String), damaged: [] });
    expect(scrub!.blocks).toBeGreaterThanOrEqual(128);
    await m.unmount();
    const chk = await vdiskfs(['check', '--verify-data', '--store', m.store]);
    expect(chk.code, chk.stdout + chk.stderr).toBe(0);
    expect(chk.stdout).toMatch(/RADOS objects/);
    // mounted again with no Ceph flags: the store recorded its cluster, pool and object prefix
    m.useExtraArgs([]);
    await m.mount();
    const live = await ddRead(work, m.disk('d'), 0, 8 * M);
    expect(live.subarray(0, M).equals(fresh)).toBe(true);
    expect(live.subarray(M).equals(data.subarray(M))).toBe(true);
    expect((await ddRead(work, join(m.vdisk, 'snapshots/d/s1'), 0, 8 * M)).equals(data)).toBe(true);
    // deleting the snapshot and the restored disk removes their objects
    await m.ctlOk('delete-snapshot d s1');
    await m.ctlOk('delete r -r');
    let n = -1;
    for (let i = 0; i < 100 && n !== 128; i++, await new Promise((r) => setTimeout(r, 100))) n = await objectCount(); // discards follow the commit
    expect(n).toBe(128);
  });

  it('a clone, a delta between two snapshots, and a restore of the delta into a disk restored from the first', async () => {
    await m.ctlOk('create e 32M');
    const v1 = randomBuffer(60, 4 * M);
    expect((await ddWrite(work, m.disk('e'), 0, v1, { bs: M, fsync: true })).code).toBe(0);
    await m.ctlOk('snapshot e s1');
    await m.ctlOk('clone e s1 ec');
    const v2 = randomBuffer(61, M);
    expect((await ddWrite(work, m.disk('e'), 2 * M, v2, { bs: M, fsync: true })).code).toBe(0);
    await m.ctlOk('snapshot e s2');
    expect((await ddRead(work, m.disk('ec'), 0, 4 * M)).equals(v1)).toBe(true); // the clone keeps s1
    const full = join(work, 'e-s1.img');
    const delta = join(work, 'e-s1-s2.img');
    expect((await ddToFile(join(m.vdisk, 'copies/e/s1'), full)).code).toBe(0);
    expect((await ddToFile(join(m.vdisk, 'deltas/e/s1..s2'), delta)).code).toBe(0);
    expect((await sh(`dd if=${q(full)} of=${q(join(m.vdisk, 'import/er'))} bs=1M status=none`)).code).toBe(0);
    expect((await sh(`dd if=${q(delta)} of=${q(join(m.vdisk, 'restore/er'))} bs=1M status=none`)).code).toBe(0);
    expect((await ddRead(work, m.disk('er'), 0, 4 * M)).equals(await ddRead(work, m.disk('e'), 0, 4 * M))).toBe(true);
  });

  it.skipIf(noLoop)('ext4 loop-mounted from a disk whose blocks are in RADOS: a tree copied in reads back after a remount', async () => {
    const { disk, tree } = await m.ext4WithTree('fs', '128M', 3, 'tree', 'loop-ceph');
    await m.remount();
    expect((await sh(`e2fsck -fn ${q(disk)}`)).code).toBe(0);
    const lm = await m.loopMount(disk, 'loop-ceph');
    const diff = await sh(`diff -r -x lost+found ${q(tree)} ${q(lm)}`);
    expect(diff.stdout + diff.stderr).toBe('');
    expect(diff.code).toBe(0);
    expect(Number((await shOk(`find ${q(lm)} -type f -name 'file*.bin' | wc -l`)).trim())).toBe(50); // the tree is there
    await m.loopUmount(lm);
  });

  it('SIGKILL of the daemon during writes: check is clean and every acknowledged (fsync-ed) write reads back', async () => {
    await m.ctlOk('create k 32M');
    const acked = randomBuffer(30, 4 * M);
    expect((await ddWrite(work, m.disk('k'), 0, acked, { bs: M, fsync: true })).code).toBe(0);
    // more writes in flight, then the kill
    const more = sh(`dd if=/dev/urandom of=${q(m.disk('k'))} bs=64K seek=128 count=256 conv=notrunc status=none 2>/dev/null || true`);
    await new Promise((r) => setTimeout(r, 300));
    const id = await storeId();
    await m.kill9();
    await more;
    // an object no table references, as a crash leaves them (a block written whose batch never committed)
    await shOk(`printf leak | rados -c ${q(conf!)} -p ${q(POOL)} put ${id}.00010000.0000000fffff -`);
    const chk = await whenUnlocked(() => vdiskfs(['check', '--store', m.store]), (r) => !/in use by another vdiskfs/.test(r.stderr));
    expect(chk.code, chk.stdout + chk.stderr).toBe(3); // leaks (exit 3), not errors (2)
    expect(chk.stdout).toMatch(/LEAK: \d+ block objects \(\d+ bytes\) in Ceph that no table references/);
    await whenUnlocked(() => m.mount()); // after a crash the mount removes them
    expect((await ddRead(work, m.disk('k'), 0, 4 * M)).equals(acked)).toBe(true);
    await m.unmount();
    const clean = await vdiskfs(['check', '--store', m.store]);
    expect(clean.code, clean.stdout + clean.stderr).toBe(0);
    await m.mount();
  });

  it('an OSD killed while a disk is written: writes go on, and everything acknowledged reads back, then and after it rejoins', async () => {
    const cluster = dirname(conf!);
    await m.ctlOk('create o 64M');
    const before = randomBuffer(40, 4 * M);
    expect((await ddWrite(work, m.disk('o'), 0, before, { bs: M, fsync: true })).code).toBe(0);
    const during = randomBuffer(41, 8 * M);
    const writing = ddWrite(work, m.disk('o'), 4 * M, during, { bs: 64 * 1024, fsync: true });
    await new Promise((r) => setTimeout(r, 200));
    await shOk(`bash ${q(join(REPO, 'scripts/ceph-local.sh'))} kill-osd ${q(cluster)} 2`);
    try {
      const r = await writing;
      expect(r.code, r.stderr).toBe(0);
      const all = await ddRead(work, m.disk('o'), 0, 12 * M);
      expect(all.subarray(0, 4 * M).equals(before)).toBe(true);
      expect(all.subarray(4 * M).equals(during)).toBe(true);
    } finally {
      await shOk(`bash ${q(join(REPO, 'scripts/ceph-local.sh'))} start-osd ${q(cluster)} 2`);
    }
    await m.remount(); // read from the cluster again, not from the daemon's caches
    const again = await ddRead(work, m.disk('o'), 0, 12 * M);
    expect(again.subarray(0, 4 * M).equals(before)).toBe(true);
    expect(again.subarray(4 * M).equals(during)).toBe(true);
  });

  it('the store lives in the cluster: a second store directory mounts it after the first is gone, a second writer is refused', async () => {
    await m.ctlOk('create h 64M');
    const first = randomBuffer(50, 2 * M);
    expect((await ddWrite(work, m.disk('h'), 0, first, { bs: M, fsync: true })).code).toBe(0);
    await m.ctlOk('snapshot h a');
    const id = await storeId();
    // another machine (here: another, empty store directory) while the first daemon runs: its lock refuses
    const other = await VdiskMount.unmounted({ extraArgs: ['--rados-pool', POOL, '--ceph-conf', conf!, '--rados-store', id] });
    await mkdir(other.mp, { recursive: true });
    await expect(other.mount()).rejects.toThrow(/store vdiskfs\.[0-9a-f-]+ in Ceph pool vdiskfs is in use by another vdiskfs/);
    // after a clean unmount it mounts: the tables come from the cluster (its checkpoint)
    await m.unmount();
    await other.mount();
    expect((await ddRead(work, other.disk('h'), 0, 2 * M)).equals(first)).toBe(true);
    expect((await ddRead(work, join(other.vdisk, 'snapshots/h/a'), 0, 2 * M)).equals(first)).toBe(true);
    // the second machine writes and dies (SIGKILL: no checkpoint); the first comes back once the lease
    // lapsed and catches up from the journal: everything acknowledged is there
    const second = randomBuffer(51, M);
    expect((await ddWrite(work, other.disk('h'), 4 * M, second, { bs: M, fsync: true })).code).toBe(0);
    await other.ctlOk('snapshot h b');
    await other.kill9();
    const t0 = Date.now();
    await whenUnlocked(() => m.mount());
    expect(Date.now() - t0).toBeLessThan(20_000);
    expect((await ddRead(work, m.disk('h'), 4 * M, M)).equals(second)).toBe(true);
    expect((await ddRead(work, join(m.vdisk, 'snapshots/h/b'), 0, 2 * M)).equals(first)).toBe(true);
    // a store id the cluster does not have
    const none = await VdiskMount.unmounted({ extraArgs: ['--rados-pool', POOL, '--ceph-conf', conf!, '--rados-store', 'vdiskfs.00000000-0000'] });
    await mkdir(none.mp, { recursive: true });
    await expect(none.mount()).rejects.toThrow(/store vdiskfs\.00000000-0000 in Ceph pool vdiskfs.*(not found|no such)/i);
  });

  it('clear errors: another pool for an existing store, a new rados store without a pool, a cluster that is not there', async () => {
    await m.unmount();
    m.useExtraArgs(['--rados-pool', 'elsewhere']);
    await expect(m.mount()).rejects.toThrow(/keeps its blocks in Ceph pool 'vdiskfs', not 'elsewhere'/);
    m.useExtraArgs([]);
    await m.mount();
    const other = await VdiskMount.unmounted({ extraArgs: ['--block-store', 'rados', '--ceph-conf', conf!] });
    await expect(other.mount()).rejects.toThrow(/a new rados store needs its Ceph pool: --rados-pool/);
    const badConf = join(work, 'nowhere.conf');
    await writeFile(badConf, '[global]\nmon_host = 127.0.0.1:1\nauth_client_required = none\nclient_mount_timeout = 3\n');
    const dead = await VdiskMount.unmounted({ extraArgs: ['--rados-pool', POOL, '--ceph-conf', badConf] });
    const t0 = Date.now();
    await expect(dead.mount()).rejects.toThrow(/cannot connect to Ceph pool vdiskfs/);
    expect(Date.now() - t0).toBeLessThan(60_000);
  });
});
