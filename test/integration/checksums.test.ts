// Block checksums through the mount (issue 17): four bytes changed inside a used block of a pool file are
// never read back as data. dd of the disk gets EIO, status counts it, the backup copy of a snapshot holding
// the block fails, `vdiskfs check --verify-data` exits 2 naming it, `scrub` reports it, and `vdiskfs
// repair` from a backup image taken before puts it back; then everything reads and checks clean.
import { open, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { VdiskMount, ddRead, ddWrite, randomBuffer, requireBuild, teardownAll, vdiskfs } from './helpers.js';
import { ddToFile } from './backupHelpers.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const BS = 64 * KiB;

let m: VdiskMount;
let work: string;
let data: Buffer;

beforeAll(async () => {
  requireBuild();
  m = await VdiskMount.create();
  work = await m.scratch('work');
});
afterAll(teardownAll);

/** Flip 4 bytes of pool-65536.dat at the physical block holding byte `offset` of the disk's data (written in order into an empty store). */
async function damagePool(pbn: number, offsetInBlock: number): Promise<void> {
  const fh = await open(join(m.store, `pool-${BS}.dat`), 'r+');
  try {
    const b = Buffer.alloc(4);
    await fh.read(b, 0, 4, pbn * BS + offsetInBlock);
    for (let i = 0; i < 4; i++) b[i] = b[i]! ^ 0xa5;
    await fh.write(b, 0, 4, pbn * BS + offsetInBlock);
  } finally {
    await fh.close();
  }
}

describe('block checksums through the mount', () => {
  it('a changed byte in a pool file is EIO to dd, fails the copy, is named by check and scrub, and repair puts it back', async () => {
    await m.ctlOk('create d 16M');
    data = randomBuffer(77, 4 * MiB);
    expect((await ddWrite(work, m.disk('d'), 0, data, { bs: MiB, fsync: true })).code).toBe(0);
    await m.ctlOk('snapshot d s');
    const good = join(work, 'd-s.img');
    expect((await ddToFile(join(m.vdisk, 'copies/d/s'), good)).code).toBe(0);
    await m.unmount();
    expect((await stat(join(m.store, `pool-${BS}.dat`))).size).toBe(4 * MiB); // pbn = lbn: written in order
    await damagePool(10, 30_000); // byte 10*64K + 30000 of the disk
    const chk = await vdiskfs(['check', '--verify-data', '--store', m.store]);
    expect(chk.code, chk.stdout + chk.stderr).toBe(2);
    expect(chk.stdout).toMatch(/ERROR: damaged block: d at byte 655360 \(block 10, pool block 10\)/);
    expect(chk.stdout).toMatch(/ERROR: damaged block: d@s at byte 655360|ERROR: damaged block: d at byte 655360/);
    await m.mount();

    // dd of the whole disk stops with EIO at the damaged block; the blocks before it read.
    const dd = await ddRead(work, m.disk('d'), 0, 4 * MiB).catch((e: Error) => e);
    expect(dd).toBeInstanceOf(Error);
    expect(String(dd)).toMatch(/Input\/output error/);
    expect((await ddRead(work, m.disk('d'), 0, 10 * BS)).equals(data.subarray(0, 10 * BS))).toBe(true);
    expect((await ddRead(work, m.disk('d'), 11 * BS, BS)).equals(data.subarray(11 * BS, 12 * BS))).toBe(true);
    const st = await m.status();
    expect(st.checksums.damaged).toBeGreaterThanOrEqual(1);
    expect(await readFile(join(m.vdisk, 'status'), 'utf8')).toMatch(/checksums: \d+ damaged block\(s\) read since mount \(latest: disk d, block 10/);
    // The copy of the snapshot holding it fails rather than carry it.
    expect((await ddToFile(join(m.vdisk, 'copies/d/s'), join(work, 'bad.img'))).code).not.toBe(0);

    // scrub names it.
    await m.ctlOk('scrub d');
    let scrub = (await m.status()).checksums.scrub;
    for (let i = 0; i < 200 && !scrub?.finished; i++) {
      await new Promise((r) => setTimeout(r, 50));
      scrub = (await m.status()).checksums.scrub;
    }
    expect(scrub).toMatchObject({ blocks: 64, total: 64, damaged: [{ view: 'd', offset: 655360 }] });

    // repair from the image taken before: the block is back, everything reads and checks clean.
    const rep = await vdiskfs(['repair', 'd', good, '--store', m.store]);
    expect(rep.code, rep.stderr).toBe(0);
    expect(rep.stdout).toMatch(/1 of 1 damaged block\(s\) repaired \(d byte 655360\)/);
    await m.unmount();
    await m.mount(); // drop what the kernel cached of the disk file
    expect((await ddRead(work, m.disk('d'), 0, 4 * MiB, MiB)).equals(data)).toBe(true);
    await m.unmount();
    const clean = await vdiskfs(['check', '--verify-data', '--store', m.store]);
    expect(clean.code, clean.stdout).toBe(0);
    expect(clean.stdout).toMatch(/data: 64 block\(s\) verified against their checksums, 0 damaged/);
  });
});
