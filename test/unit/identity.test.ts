/**
 * A disk's claim to hold a restored image (disk/identity.ts): every change to its content or size ends the
 * claim, and an incremental image applies only onto a disk that still holds its base. Each case restores a
 * full image of d@s1 into a disk, changes the disk one way, and then tries the delta s1..s2: refused with a
 * clear reason, the disk unchanged. The control case (no change) applies and gives exactly d@s2.
 */
import { describe, it, expect, afterAll, beforeEach } from 'vitest';
import { Registry } from '../../src/disk/registry.js';
import type { DiskState } from '../../src/disk/context.js';
import { writeDisk, readView, writeDiskNow, discardRange } from '../../src/disk/io.js';
import { createSnapshot, rollback, cloneSnapshot } from '../../src/disk/snapshots.js';
import { findTarget, producerFor } from '../../src/image/snapshotImage.js';
import { restoreRecorded, type RestoreTarget } from '../../src/restore/restore.js';
import { diskKey } from '../../src/meta/keys.js';
import type { DiskRecord } from '../../src/meta/records.js';
import { VdiskError } from '../../src/errors.js';
import { prng, randomBytes, tempDir, cleanupDirs, expectCode } from './helpers.js';

afterAll(cleanupDirs);

const K = 1024;
const BS = 64 * K;
const SIZE = 4 * 1024 * K;

async function image(reg: Registry, disk: string, snap: string, base?: string): Promise<Buffer> {
  const p = await producerFor(findTarget(reg, disk, snap, base));
  const parts: Buffer[] = [];
  for await (const c of p.chunks()) parts.push(Buffer.from(c));
  return Buffer.concat(parts);
}

async function readAll(reg: Registry, d: DiskState, snap = -1): Promise<Buffer> {
  const size = snap >= 0 ? d.rec.snapshots[snap]!.size : d.rec.size;
  const b = Buffer.alloc(size);
  const n = await readView(reg.ctx, d, snap, 0, b);
  return b.subarray(0, n);
}

const restore = (reg: Registry, img: Buffer, target: RestoreTarget) => restoreRecorded(reg, [img], target);

/** The claim as stored in LevelDB (what a restart would see). */
async function storedClaim(reg: Registry, name: string): Promise<string | null | undefined> {
  const [v] = await reg.ctx.db.getMany([diskKey(name)]);
  return (JSON.parse(v!) as DiskRecord).contentUid;
}

interface World {
  reg: Registry;
  full: Buffer;
  delta: Buffer;
  s1: string;
  s2: Buffer;
}

/** d: data at 900K.. and at 0, snapshot s1; more data, snapshot s2; r := restore of d@s1 (holds s1). */
async function world(): Promise<World> {
  const rnd = prng(21);
  const reg = await Registry.open({ dir: await tempDir() });
  await reg.create('d', SIZE, BS);
  const d = reg.disk('d');
  await writeDisk(reg.ctx, d, 3 * 1024 * K + 5, randomBytes(rnd, 300 * K));
  await writeDisk(reg.ctx, d, 7, randomBytes(rnd, 100 * K));
  const s1 = (await createSnapshot(reg.ctx, d, 's1')).uid;
  await writeDisk(reg.ctx, d, 64 * K + 100, randomBytes(rnd, 200 * K));
  await writeDisk(reg.ctx, d, 3 * 1024 * K, Buffer.alloc(BS)); // a block that becomes a hole
  await createSnapshot(reg.ctx, d, 's2');
  const full = await image(reg, 'd', 's1');
  const delta = await image(reg, 'd', 's2', 's1');
  await restore(reg, full, { mode: 'new', name: 'r' });
  expect(reg.disk('r').rec.contentUid).toBe(s1);
  return { reg, full, delta, s1, s2: await readAll(reg, d, 1) };
}

/** The delta must be refused because r no longer holds s1, and r must be exactly as before the attempt. */
async function expectRefused(w: World, why = /changed since its snapshot s1, the base of this incremental image/): Promise<void> {
  const r = w.reg.disk('r');
  const before = await readAll(w.reg, r);
  const size = r.rec.size;
  const err = await expectCode(restore(w.reg, w.delta, { mode: 'into', name: 'r' }), 'INVALID');
  expect(err.message).toMatch(why);
  expect(r.rec.size).toBe(size);
  expect((await readAll(w.reg, r)).equals(before)).toBe(true);
  const last = (await w.reg.history()).at(-1)!;
  expect(last).toMatchObject({ command: 'restore into r', result: 'error' });
  expect(last.message).toMatch(why);
}

describe('the claim to hold a restored image', () => {
  let w: World;
  beforeEach(async () => {
    if (w) await w.reg.close();
    w = await world();
  });
  afterAll(async () => {
    await w?.reg.close();
  });

  it('control: a disk that holds the base takes the delta and becomes exactly the newer snapshot', async () => {
    const res = await restore(w.reg, w.delta, { mode: 'into', name: 'r' });
    expect(res.kind).toBe('delta');
    const r = w.reg.disk('r');
    expect((await readAll(w.reg, r)).equals(w.s2)).toBe(true);
    expect(r.rec.contentUid).toBe(w.reg.disk('d').rec.snapshots[1]!.uid);
    expect((await w.reg.history()).at(-1)).toMatchObject({ command: 'restore into r', result: 'ok' });
    // r has both snapshots under the source's names and identities
    expect(r.rec.snapshots.map((s) => [s.name, s.uid])).toEqual(w.reg.disk('d').rec.snapshots.map((s) => [s.name, s.uid]));
    // the same delta again: r has s2 already
    const err = await expectCode(restore(w.reg, w.delta, { mode: 'into', name: 'r' }), 'EXISTS');
    expect(err.message).toMatch(/applied already/);
  });

  it('a write ends the claim, in the store before the write returns, and the fast path declines', async () => {
    const r = w.reg.disk('r');
    expect(writeDiskNow(w.reg.ctx, r, 0, Buffer.alloc(4096, 1))).toBeUndefined();
    await writeDisk(w.reg.ctx, r, 0, Buffer.alloc(4096, 1));
    expect(await storedClaim(w.reg, 'r')).toBeNull();
    await expectRefused(w);
  });

  it('a zero write over a hole ends the claim but changes nothing: r still is its latest snapshot s1, and the delta applies', async () => {
    const r = w.reg.disk('r');
    await writeDisk(w.reg.ctx, r, 2 * 1024 * K, Buffer.alloc(BS));
    expect(await storedClaim(w.reg, 'r')).toBeNull();
    expect(await w.reg.diskView('r').holds()).toEqual([w.s1]);
    await restore(w.reg, w.delta, { mode: 'into', name: 'r' });
    expect((await readAll(w.reg, r)).equals(w.s2)).toBe(true);
  });

  it('a zero write over data ends the claim', async () => {
    await writeDisk(w.reg.ctx, w.reg.disk('r'), 0, Buffer.alloc(3 * BS));
    await expectRefused(w);
  });

  it('a discard (fallocate punch hole) ends the claim', async () => {
    await discardRange(w.reg.ctx, w.reg.disk('r'), 3 * 1024 * K, 2 * BS);
    expect(await storedClaim(w.reg, 'r')).toBeNull();
    await expectRefused(w);
  });

  it('a shrink ends the claim (and so does the grow back to the same size)', async () => {
    await w.reg.resize('r', SIZE / 2);
    await w.reg.resize('r', SIZE);
    expect(await storedClaim(w.reg, 'r')).toBeNull();
    await expectRefused(w);
  });

  it('a grow ends the claim', async () => {
    await w.reg.resize('r', SIZE + BS);
    await expectRefused(w);
  });

  it('a rollback ends the claim: the disk then holds the snapshot it rolled back to', async () => {
    const r = w.reg.disk('r');
    const t = await createSnapshot(w.reg.ctx, r, 't');
    await rollback(w.reg.ctx, r, 't');
    expect(await storedClaim(w.reg, 'r')).toBe(t.uid);
    await expectRefused(w, /changed since its snapshot s1.*deleting the newer snapshots t$/);
  });

  it('after a rollback to the base, the delta applies onto the source disk itself and gives the newer snapshot', async () => {
    const d = w.reg.disk('d');
    const s2uid = d.rec.snapshots[1]!.uid;
    await writeDisk(w.reg.ctx, d, 0, Buffer.alloc(4096, 9)); // the live disk moved on after s2
    await rollback(w.reg.ctx, d, 's1');
    expect(await storedClaim(w.reg, 'd')).toBe(w.s1);
    // d still has s2: the delta that creates it was applied already
    await expectCode(restore(w.reg, w.delta, { mode: 'into', name: 'd' }), 'EXISTS');
    await rollback(w.reg.ctx, d, 's1', { destroyNewer: true });
    expect(d.rec.snapshots.map((s) => s.name)).toEqual(['s1']);
    const res = await restore(w.reg, w.delta, { mode: 'into', name: 'd' });
    expect(res.kind).toBe('delta');
    expect((await readAll(w.reg, d)).equals(w.s2)).toBe(true);
    expect(d.rec.snapshots.map((s) => [s.name, s.uid])).toEqual([['s1', w.s1], ['s2', s2uid]]);
    // a write ends that claim like any other
    await writeDisk(w.reg.ctx, d, 0, Buffer.alloc(4096, 1));
    expect(await storedClaim(w.reg, 'd')).toBeNull();
  });

  it('a disk made again under the same name (a clone) claims nothing', async () => {
    await w.reg.delete('r', { recursive: true }); // with its received snapshot s1
    await cloneSnapshot(w.reg.ctx, w.reg.disk('d'), 's1', 'r');
    await expectRefused(w, /does not have base snapshot d@s1/);
  });

  it('a restore whose final batch fails leaves no claim', async () => {
    // a full image of s2 into r, with the LevelDB batch that would commit it failing
    const img = await image(w.reg, 'd', 's2');
    const db = w.reg.ctx.db;
    const batch = db.batch.bind(db);
    db.batch = ((ops: unknown[], o: unknown) =>
      (ops as { key: string }[]).some((op) => op.key.startsWith('t!')) ? Promise.reject(new Error('injected batch failure')) : batch(ops as never, o as never)) as typeof db.batch;
    try {
      await expect(restore(w.reg, img, { mode: 'into', name: 'r' })).rejects.toThrow(/injected/);
    } finally {
      db.batch = batch;
    }
    expect(w.reg.disk('r').rec.contentUid).toBeNull();
    expect(await storedClaim(w.reg, 'r')).toBeNull();
    w.reg.ctx.failure = null; // the injected failure marked the store failed
    // nothing of the image reached r's tables: r still is its latest snapshot s1, which the delta applies onto
    expect(await w.reg.diskView('r').holds()).toEqual([w.s1]);
    await restore(w.reg, w.delta, { mode: 'into', name: 'r' });
    expect((await readAll(w.reg, w.reg.disk('r'))).equals(w.s2)).toBe(true);
  });

  it('a restore refused before it touched the disk leaves it holding its base (and the delta then applies)', async () => {
    const img = await image(w.reg, 'd', 's2');
    const r = w.reg.disk('r');
    const before = await readAll(w.reg, r);
    await expect(restore(w.reg, img.subarray(0, img.length - 100), { mode: 'into', name: 'r' })).rejects.toMatchObject({ code: 'CORRUPT' });
    expect((await readAll(w.reg, r)).equals(before)).toBe(true);
    expect(r.rec.contentUid).toBe(w.s1);
    await restore(w.reg, w.delta, { mode: 'into', name: 'r' });
    expect((await readAll(w.reg, r)).equals(w.s2)).toBe(true);
  });

  it('a write while the delta streams in is seen at the commit: the delta is refused', async () => {
    const r = w.reg.disk('r');
    let resume!: () => void;
    const paused = new Promise<void>((res) => (resume = res));
    let headerSent!: () => void;
    const sent = new Promise<void>((res) => (headerSent = res));
    const delta = w.delta;
    async function* slow(): AsyncGenerator<Buffer> {
      yield delta.subarray(0, 4096);
      headerSent();
      await paused;
      yield delta.subarray(4096);
    }
    const p = restoreRecorded(w.reg, slow(), { mode: 'into', name: 'r' });
    await sent;
    await writeDisk(w.reg.ctx, r, 100, Buffer.alloc(10, 7));
    resume();
    const err = await expectCode(p, 'INVALID');
    expect(err.message).toMatch(/changed since its snapshot s1/);
    const b = Buffer.alloc(10);
    await readView(w.reg.ctx, r, -1, 100, b);
    expect(b.equals(Buffer.alloc(10, 7))).toBe(true);
  });

  it('the claim survives a reopen, and so does its end', async () => {
    const dir = w.reg.dir;
    await w.reg.close();
    w.reg = await Registry.open({ dir });
    expect(w.reg.disk('r').rec.contentUid).toBe(w.s1);
    await writeDisk(w.reg.ctx, w.reg.disk('r'), 0, Buffer.alloc(10, 1));
    await w.reg.close();
    w.reg = await Registry.open({ dir });
    expect(w.reg.disk('r').rec.contentUid).toBeNull();
    await expectRefused(w);
  });

  it('--force rolls a diverged disk back to the base first (recv -F), deleting newer snapshots; without it nothing changes', async () => {
    const r = w.reg.disk('r');
    await writeDisk(w.reg.ctx, r, 0, Buffer.alloc(3 * BS, 5));
    await createSnapshot(w.reg.ctx, r, 'mine');
    await writeDisk(w.reg.ctx, r, 5 * BS, Buffer.alloc(BS, 6));
    await expectRefused(w, /add --force to roll it back to s1 first.*newer snapshots mine$/);
    expect(r.rec.snapshots.map((s) => s.name)).toEqual(['s1', 'mine']);
    const used = w.reg.ctx.pool.usedBytes();
    const res = await restore(w.reg, w.delta, { mode: 'into', name: 'r', force: true });
    expect(res).toMatchObject({ kind: 'delta', rolledBackTo: 's1', snapshot: 's2' });
    expect((await readAll(w.reg, r)).equals(w.s2)).toBe(true);
    expect(r.rec.snapshots.map((s) => s.name)).toEqual(['s1', 's2']);
    expect(w.reg.ctx.pool.usedBytes()).toBeLessThan(used + w.delta.length); // the diverged blocks were freed
  });

  it('a full image of another size needs --resize; a taken snapshot name with another identity is refused', async () => {
    await w.reg.create('small', SIZE / 2, BS);
    let err = await expectCode(restore(w.reg, w.full, { mode: 'into', name: 'small' }), 'INVALID');
    expect(err.message).toMatch(/add --resize/);
    expect(w.reg.disk('small').rec.size).toBe(SIZE / 2);
    await restore(w.reg, w.full, { mode: 'into', name: 'small', resize: true });
    expect(w.reg.disk('small').rec.size).toBe(SIZE);
    await w.reg.create('other', SIZE, BS);
    await createSnapshot(w.reg.ctx, w.reg.disk('other'), 's1');
    err = await expectCode(restore(w.reg, w.full, { mode: 'into', name: 'other' }), 'EXISTS');
    expect(err.message).toMatch(/already has a snapshot s1 .* that is not the image's/);
  });

  it('every content change goes through dropClaim: a path that forgot it fails loudly', async () => {
    const { assertUnclaimed } = await import('../../src/disk/identity.js');
    expect(() => assertUnclaimed(w.reg.disk('r'), 'a test change')).toThrow(VdiskError);
    await writeDisk(w.reg.ctx, w.reg.disk('r'), 0, Buffer.alloc(1, 1));
    expect(() => assertUnclaimed(w.reg.disk('r'), 'a test change')).not.toThrow();
  });
});
