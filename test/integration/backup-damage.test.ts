// Damaged backup images: every variant of one good image (flipped bytes in each region, truncations,
// concatenation, random bytes, a zeroed range) is refused by verify, by the CLI restore (offline) and by
// both restore files of the mount, and nothing changes: no new disk, the target disk byte-identical, the
// pool use back to what it was.

import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { VdiskMount, q, randomBuffer, requireBuild, sh, teardownAll, vdiskfs, writeAt } from './helpers.js';
import { KiB, MiB, damagedVariants, ddToFile, fileSha, listJson, parseHeader, readAll, statusJson, variantPath, type Variant } from './backupHelpers.js';

let m: VdiskMount;
let work: string;
let good: Buffer;
let goodPath: string;
let variants: Variant[];

beforeAll(async () => {
  requireBuild();
  m = await VdiskMount.create();
  work = await m.scratch('work');
  // A 64M disk with ~3 MiB of 64K blocks (48 slots, 3 checksum groups), scattered.
  await m.ctlOk('create src 64M');
  for (let i = 0; i < 6; i++) await writeAt(m.disk('src'), i * 9 * MiB + 4096 * i, randomBuffer(900 + i, 512 * KiB - 100));
  await m.ctlOk('snapshot src s');
  goodPath = join(work, 'good.img');
  expect((await ddToFile(join(m.vdisk, 'copies/src/s'), goodPath)).code).toBe(0);
  good = await readAll(goodPath);
  const h = parseHeader(good);
  expect(h.slotCount).toBeGreaterThanOrEqual(40);
  expect(h.groupCount).toBeGreaterThanOrEqual(3);
  expect((await vdiskfs(['verify', goodPath])).code).toBe(0);
  variants = damagedVariants(good);
  for (let i = 0; i < variants.length; i++) await writeFile(variantPath(work, i), variants[i]!.data);
  // A target for method 2 with other content of the same block size.
  await m.ctlOk('create tgt 64M');
  await writeAt(m.disk('tgt'), 1 * MiB, randomBuffer(950, 2 * MiB));
  await writeAt(m.disk('tgt'), 30 * MiB + 5, randomBuffer(951, 100_000));
});

afterAll(async () => {
  await teardownAll();
});

describe('damaged images', () => {
  it('the variants really differ from the good image', () => {
    expect(variants.length).toBeGreaterThanOrEqual(25);
    for (const v of variants) expect(v.data.equals(good), v.name).toBe(false);
  });

  it('offline: verify fails naming the place; restore --as fails and leaves no disk, pool use unchanged', async () => {
    // verify does not open a store: run it 4 at a time.
    const failures: string[] = [];
    const verifyOne = async (i: number): Promise<void> => {
      const v = variants[i]!;
      const ver = await vdiskfs(['verify', variantPath(work, i)]);
      if (process.env.SHOW_VERIFY) console.log(`${v.name}: ${ver.code} ${ver.stderr.trim()}`);
      if (ver.code === 0) failures.push(`${v.name}: verify exit 0 (${ver.stdout.trim()})`);
      else if (!v.where.test(ver.stderr)) failures.push(`${v.name}: verify message does not match ${v.where}: ${ver.stderr.trim()}`);
    };
    for (let i = 0; i < variants.length; i += 4) await Promise.all([i, i + 1, i + 2, i + 3].filter((j) => j < variants.length).map(verifyOne));

    // restore --as on unmounted stores: one CLI process per store at a time, so shard the variants over
    // three stores that each start with one good restore and one empty disk.
    const SHARDS = 3;
    const stores = await Promise.all(Array.from({ length: SHARDS }, () => VdiskMount.unmounted()));
    await Promise.all(
      stores.map(async (st, k) => {
        const S = st.store;
        const ok = await vdiskfs(['restore', goodPath, '--as', 'good', '--store', S]);
        expect(ok.code, ok.stderr).toBe(0);
        expect((await vdiskfs(['create', 'empty', '64M', '--store', S])).code).toBe(0);
        const before = await statusJson(S);
        expect(before.pool.usedBytes).toBe(parseHeader(good).slotCount * 65536);
        for (let i = k; i < variants.length; i += SHARDS) {
          const r = await vdiskfs(['restore', variantPath(work, i), '--as', 'bad', '--store', S]);
          if (r.code === 0) failures.push(`${variants[i]!.name}: restore --as exit 0 (${r.stdout.trim()})`);
          else if (!/\S/.test(r.stderr)) failures.push(`${variants[i]!.name}: restore --as failed without a message`);
        }
        // Nothing was added or changed by any of the failed restores.
        const after = await statusJson(S);
        if (after.pool.usedBytes !== before.pool.usedBytes) failures.push(`store ${k}: pool usedBytes ${after.pool.usedBytes} != ${before.pool.usedBytes}`);
        const names = (await listJson(S)).map((d) => `${d.name}:${d.allocatedBytes}`).sort();
        if (JSON.stringify(names) !== JSON.stringify(['empty:0', `good:${before.pool.usedBytes}`])) failures.push(`store ${k}: disks now ${names.join(',')}`);
      }),
    );
    for (const st of stores) await st.teardown();
    expect(failures).toEqual([]);
  });

  it('through the mount: dd into import/ and restore/ fails, no disk appears, the target is unchanged', async () => {
    const tgtSha = await fileSha(m.disk('tgt'));
    const statusBefore = await m.status();
    const usedBefore = statusBefore.pool.usedBytes;
    const namesBefore = statusBefore.disks.map((d) => d.name).sort();
    const tgtBefore = statusBefore.disks.find((d) => d.name === 'tgt');
    const failures: string[] = [];
    for (let i = 0; i < variants.length; i++) {
      const v = variants[i]!;
      const file = variantPath(work, i);
      const imp = await sh(`dd if=${q(file)} of=${q(join(m.vdisk, 'import', 'bad'))} bs=1M status=none`);
      // An empty input cannot fail dd: no write happens, and the final close (FUSE release) cannot return an
      // error to close(2); the restore is abandoned and no disk appears (checked below).
      const empty = v.data.length === 0;
      if (imp.code === 0 && !empty) failures.push(`${v.name}: dd into import/ exit 0`);
      if ((await sh(`test -e ${q(m.disk('bad'))}`)).code === 0) failures.push(`${v.name}: disk 'bad' appeared`);
      const res = await sh(`dd if=${q(file)} of=${q(join(m.vdisk, 'restore', 'tgt'))} bs=1M status=none`);
      if (res.code === 0 && !empty) failures.push(`${v.name}: dd into restore/tgt exit 0`);
      const st = await m.status();
      const names = st.disks.map((d) => d.name).sort();
      if (JSON.stringify(names) !== JSON.stringify(namesBefore)) failures.push(`${v.name}: disks now ${names.join(',')}`);
      if (st.pool.usedBytes !== usedBefore) failures.push(`${v.name}: pool usedBytes ${st.pool.usedBytes} != ${usedBefore}`);
      const tgt = st.disks.find((d) => d.name === 'tgt');
      if (JSON.stringify(tgt) !== JSON.stringify(tgtBefore)) failures.push(`${v.name}: tgt status changed: ${JSON.stringify(tgt)}`);
    }
    // One full read of the target at the end (every variant was tried on it).
    expect(await fileSha(m.disk('tgt'))).toBe(tgtSha);
    expect(failures).toEqual([]);
    // And the good image still works afterwards, both ways.
    const g1 = await sh(`dd if=${q(goodPath)} of=${q(join(m.vdisk, 'import', 'okdisk'))} bs=1M status=none`);
    expect(g1.code, g1.stderr).toBe(0);
    const g2 = await sh(`dd if=${q(goodPath)} of=${q(join(m.vdisk, 'restore', 'tgt'))} bs=1M status=none`);
    expect(g2.code, g2.stderr).toBe(0);
    const same = await sh(`cmp ${q(m.disk('tgt'))} ${q(m.snap('src', 's'))} && cmp ${q(m.disk('okdisk'))} ${q(m.snap('src', 's'))}`);
    expect(same.code, same.stdout + same.stderr).toBe(0);
  });

  it('through the mount: the CLI restore --as fails for damaged images and leaves no disk', async () => {
    const pick = variants.map((v, i) => [v, i] as const).filter(([v]) => /header slotCount|middle block|truncated at size-1|concatenated/.test(v.name));
    expect(pick.length).toBe(4);
    for (const [v, i] of pick) {
      const r = await vdiskfs(['restore', variantPath(work, i), '--as', 'bad2', '--store', m.store]);
      expect(r.code, `${v.name}: ${r.stderr}`).toBe(7); // CORRUPT, the mount's typed reply
      expect(r.stderr, v.name).toMatch(/^vdiskfs: corrupt image: /);
    }
    expect((await m.status()).disks.map((d) => d.name)).not.toContain('bad2');
  });

  // Fixed bug, kept as a regression test: through the mount, `vdiskfs restore EMPTYFILE --as x` (or `... restore - --as x < /dev/null`) prints
  // "restored x" and exits 0, but no disk x exists (nothing was written to import/x, so the FUSE file never
  // saw an image). Now both fail before anything is opened (exit 2, "image file … is empty").
  it('through the mount: the CLI restore of an empty input fails', async () => {
    const i = variants.findIndex((v) => v.data.length === 0);
    const r = await vdiskfs(['restore', variantPath(work, i), '--as', 'fromempty', '--store', m.store]);
    expect((await m.status()).disks.map((d) => d.name)).not.toContain('fromempty');
    expect(r.code, r.stdout).toBe(2);
    expect(r.stderr).toMatch(/^vdiskfs: image file .* is empty/);
  });
});
