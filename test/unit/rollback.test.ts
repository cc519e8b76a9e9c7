// Rollback to the latest snapshot in the background (snapshots.ts moveBack/startRevert): the command returns
// once the disk reads as the snapshot; the entries move back in batches meanwhile; writes and control commands
// wait for the move, reads do not; a close stops it and the next open finishes it; `check` is clean at every
// step; stores of format versions 1 and 2 open and are upgraded to 3 and 4 (check leaves them as they are).
import { afterAll, describe, expect, it } from 'vitest';
import { Level } from 'level';
import { join } from 'node:path';
import { Registry } from '../../src/disk/registry.js';
import { readView, writeDisk } from '../../src/disk/io.js';
import { createSnapshot, REVERT_BATCH, rollback } from '../../src/disk/snapshots.js';
import { sealDue } from '../../src/disk/scrub.js';
import { checkStore } from '../../src/check/check.js';
import { renderStatus, storeStatus } from '../../src/control/status.js';
import { FORMAT_KEY } from '../../src/meta/keys.js';
import { randomBytes } from 'node:crypto';
import { cleanupDirs, tempDir } from './helpers.js';

afterAll(cleanupDirs);

const BS = 4096;
/** More changed blocks than one batch moves: the move takes several batches. */
const N = 3 * REVERT_BATCH + 17;

async function readAll(reg: Registry, name: string, snap = -1): Promise<Buffer> {
  const d = reg.disk(name);
  const b = Buffer.alloc(d.rec.size);
  await readView(reg.ctx, d, snap, 0, b);
  return b;
}

/** Write buf at the start of disk d in 1 MiB requests, as the kernel sends them. */
async function writeChunked(reg: Registry, buf: Buffer): Promise<void> {
  for (let o = 0; o < buf.length; o += 1 << 20) await writeDisk(reg.ctx, reg.disk('d'), o, buf.subarray(o, o + (1 << 20)));
}

/** A disk of N blocks with content A, a snapshot s of it, then every block rewritten (B) and a tail grown. */
async function changedDisk(dir: string): Promise<{ reg: Registry; a: Buffer }> {
  const reg = await Registry.open({ dir });
  await reg.create('d', N * BS, BS);
  const d = reg.disk('d');
  const a = randomBytes(N * BS); // random: no block is all zeros
  await writeChunked(reg, a);
  await createSnapshot(reg.ctx, d, 's');
  await writeChunked(reg, randomBytes(N * BS));
  await reg.resize('d', (N + 8) * BS);
  await writeDisk(reg.ctx, d, N * BS, Buffer.alloc(8 * BS, 9));
  await reg.ctx.drain();
  return { reg, a };
}

describe('rollback to the latest snapshot moves entries back in the background', () => {
  it('returns with the disk reading as the snapshot; a write waits for the move; space and check follow', async () => {
    const dir = await tempDir();
    const { reg, a } = await changedDisk(dir);
    const d = reg.disk('d');
    const usedBefore = reg.ctx.pool.usedBytes();
    await rollback(reg.ctx, d, 's');
    // Returned before the move ended (N entries > one batch): the disk reads as s already.
    expect(d.rec.reverting).toBe(d.rec.snapshots[0]!.id);
    expect(d.revert).not.toBeNull();
    expect(d.rec.size).toBe(N * BS);
    expect(storeStatus(reg).disks[0]).toMatchObject({ name: 'd', rollingBackTo: 's' });
    expect(renderStatus(storeStatus(reg))).toMatch(/rolling back to @s/);
    expect((await readAll(reg, 'd')).equals(a)).toBe(true);
    // A write waits for the move, then lands on the rolled-back content.
    await writeDisk(reg.ctx, d, BS, Buffer.alloc(100, 7));
    expect(d.rec.reverting).toBeUndefined();
    expect(d.revert).toBeNull();
    expect(storeStatus(reg).disks[0]!.rollingBackTo).toBeUndefined();
    const want = Buffer.from(a);
    want.fill(7, BS, BS + 100);
    expect((await readAll(reg, 'd')).equals(want)).toBe(true);
    expect((await readAll(reg, 'd', 0)).equals(a)).toBe(true);
    // The blocks written after s are free again (one new block for the write since: copy-on-write from s).
    expect(reg.ctx.pool.usedBytes()).toBe(usedBefore - (N + 8) * BS + BS);
    expect(d.held.get(d.rec.snapshots[0]!.id)).toBe(1);
    await reg.close();
    const r = await checkStore(dir);
    expect(r.errors).toEqual([]);
    expect(r.leaks).toEqual([]);
  });

  it('a close stops the move between batches; the store reads as the snapshot meanwhile and the next open finishes it', async () => {
    const dir = await tempDir();
    const { reg, a } = await changedDisk(dir);
    const d = reg.disk('d');
    await rollback(reg.ctx, d, 's');
    expect(d.rec.reverting).toBeDefined();
    await reg.close(); // stops after the current batch
    // check (which does not resume the move) finds the unfinished rollback consistent: a warning, no error
    const r = await checkStore(dir);
    expect(r.errors).toEqual([]);
    expect(r.leaks).toEqual([]);
    const { Level: L } = await import('level');
    const db = new L<string, string>(join(dir, 'db'), { keyEncoding: 'utf8', valueEncoding: 'utf8' });
    const rec = JSON.parse((await db.getMany(['disk!d']))[0]!) as { reverting?: number };
    await db.close();
    if (rec.reverting !== undefined) expect(r.warnings.join('\n')).toMatch(/rollback to snapshot s is unfinished/);
    const again = await Registry.open({ dir });
    expect((await readAll(again, 'd')).equals(a)).toBe(true); // at once, moved or not
    await again.disk('d').settled();
    expect(again.disk('d').rec.reverting).toBeUndefined();
    expect((await readAll(again, 'd')).equals(a)).toBe(true);
    await again.close();
    const r2 = await checkStore(dir);
    expect(r2).toMatchObject({ errors: [], leaks: [], warnings: [] });
  });

  it('snapshot, delete-snapshot and another rollback wait for the move; a small rollback is finished when it returns', async () => {
    const dir = await tempDir();
    const { reg, a } = await changedDisk(dir);
    const d = reg.disk('d');
    await rollback(reg.ctx, d, 's');
    await createSnapshot(reg.ctx, d, 't'); // waits
    expect(d.rec.reverting).toBeUndefined();
    expect((await readAll(reg, 'd', 1)).equals(a)).toBe(true);
    await writeDisk(reg.ctx, d, 0, Buffer.alloc(BS, 4));
    await rollback(reg.ctx, d, 't'); // one block changed: done before it returns
    expect(d.rec.reverting).toBeUndefined();
    expect(d.revert).toBeNull();
    expect((await readAll(reg, 'd')).equals(a)).toBe(true);
    await reg.close();
    expect(await checkStore(dir)).toMatchObject({ errors: [], leaks: [], warnings: [] });
  });
});

describe('store format versions', () => {
  // Stores of versions 1-4 have no checksums in their entries: written here with checksums off, as those
  // builds wrote them (versions 5 and 6 may have entries without them too). They open, are upgraded to 8
  // (file) and 9 (leveldb), read back unverified, and take checksums for what is written after.
  it.each([
    ['file', 1, 8],
    ['file', 3, 8],
    ['file', 5, 8],
    ['leveldb', 2, 9],
    ['leveldb', 4, 9],
    ['leveldb', 6, 9],
  ] as const)('opens a %s store of version %i and upgrades it to %i; check leaves the version as it is', async (blockStore, old, now) => {
    {
      const dir = await tempDir();
      process.env.VDISKFS_CHECKSUMS = 'off';
      const reg = await Registry.open({ dir, blockStore }).finally(() => delete process.env.VDISKFS_CHECKSUMS);
      await reg.create('d', 64 * BS, BS);
      await writeDisk(reg.ctx, reg.disk('d'), 0, Buffer.alloc(8 * BS, 3));
      await reg.close();
      const setVersion = async (v: number): Promise<number> => {
        const db = new Level<string, string>(join(dir, 'db'), { keyEncoding: 'utf8', valueEncoding: 'utf8' });
        const rec = JSON.parse((await db.getMany([FORMAT_KEY]))[0]!) as { version: number };
        if (v) await db.put(FORMAT_KEY, JSON.stringify({ ...rec, version: v }));
        await db.close();
        return rec.version;
      };
      expect(await setVersion(old)).toBe(now); // a new store is written as the current version
      expect((await checkStore(dir)).errors).toEqual([]);
      expect(await setVersion(0)).toBe(old); // check only looked
      const again = await Registry.open({ dir });
      expect(again.blockStore).toBe(blockStore);
      const b = Buffer.alloc(8 * BS);
      await readView(again.ctx, again.disk('d'), -1, 0, b);
      expect(b.equals(Buffer.alloc(8 * BS, 3))).toBe(true);
      const old0 = await again.disk('d').live.get(0);
      expect(old0?.kind === 'data' && old0.sums, 'an old entry is unverified').toBeUndefined();
      expect(again.disk('d').dirty.size, 'and queued for the sealer').toBe(8);
      await writeDisk(again.ctx, again.disk('d'), 16 * BS, Buffer.alloc(BS, 4));
      const new16 = await again.disk('d').live.get(16);
      expect(new16?.kind === 'data' && new16.sums, 'a new block has checksums').toBeTypeOf('string');
      expect(await sealDue(again.ctx)).toBe(8); // the sealer's next pass (a close leaves them: it never reads the store)
      await again.close();
      expect(await setVersion(0)).toBe(now);
      expect((await checkStore(dir, { verifyData: true })).data).toMatchObject({ verified: 9, unverified: 0, damaged: [] });
    }
  });
});
