// `check` and pool files that lost data (issue 17): a pool file cut below the length recorded as synced, or
// missing, is an error counting the referenced blocks lost, per disk and snapshot; blocks past the end that
// were never synced (what a power cut may take) stay a warning; a clean close records exact lengths, so a
// later unsynced growth is never taken for lost data.
import { afterAll, describe, expect, it } from 'vitest';
import { rm, stat, truncate } from 'node:fs/promises';
import { join } from 'node:path';
import { Registry } from '../../src/disk/registry.js';
import { writeDisk } from '../../src/disk/io.js';
import { createSnapshot } from '../../src/disk/snapshots.js';
import { checkStore } from '../../src/check/check.js';
import { cleanupDirs, tempDir } from './helpers.js';

afterAll(cleanupDirs);

const BS = 4096;
const fill = (n: number, v: number): Buffer => Buffer.alloc(n * BS, v);

/** Disk d: 40 blocks, snapshot s, then 10 of them rewritten (new blocks 40..49 in the pool file). */
async function store(): Promise<string> {
  const dir = await tempDir();
  const reg = await Registry.open({ dir });
  await reg.create('d', 64 * BS, BS);
  const d = reg.disk('d');
  await writeDisk(reg.ctx, d, 0, fill(40, 1));
  await createSnapshot(reg.ctx, d, 's');
  await writeDisk(reg.ctx, d, 0, fill(10, 2));
  await reg.sync();
  await reg.close();
  return dir;
}

describe('check and pool files that lost data', () => {
  it('a pool file cut below its synced length is an error that counts the referenced blocks lost', async () => {
    const dir = await store();
    const pool = join(dir, `pool-${BS}.dat`);
    expect((await stat(pool)).size).toBe(50 * BS);
    expect(await checkStore(dir)).toMatchObject({ errors: [], warnings: [], leaks: [] });
    await truncate(pool, 25 * BS); // pbns 25..49 gone: 15 of d's original blocks, its 10 rewritten ones
    const r = await checkStore(dir);
    expect(r.errors).toHaveLength(1);
    expect(r.errors[0]).toMatch(/pool-4096\.dat is 102400 bytes, shorter than the 204800 bytes known synced: 25 referenced block\(s\) lost/);
    expect(r.errors[0]).toMatch(/\(d: 25\)/); // d@s's own blocks are pbns 0..9
    const r2 = await checkStore(dir, { repair: true }); // nothing to repair: still an error
    expect(r2.errors).toHaveLength(1);
  });

  it('without a clean close, the length fsyncs recorded is what tells a cut file from unsynced data', async () => {
    const dir = await tempDir();
    const reg = await Registry.open({ dir });
    await reg.create('d', 64 * BS, BS);
    await writeDisk(reg.ctx, reg.disk('d'), 0, fill(20, 1));
    // The length a flush made durable is written with the next synced batch: it may lag, never lead.
    await reg.sync();
    expect((await reg.ctx.db.getMany([`meta!pool!${BS.toString(16).padStart(8, '0')}`]))[0]).toBeUndefined();
    await reg.sync();
    const mark = (await reg.ctx.db.getMany([`meta!pool!${BS.toString(16).padStart(8, '0')}`]))[0];
    expect(Number(mark)).toBe(20 * BS);
    // The daemon dies (no clean close: nothing recorded, nothing cut), then the file is cut.
    await reg.ctx.pool.settle();
    await reg.ctx.pool.close({ trim: false });
    await reg.ctx.db.close();
    await truncate(join(dir, `pool-${BS}.dat`), 12 * BS);
    const r = await checkStore(dir);
    expect(r.errors.join('\n')).toMatch(/shorter than the 81920 bytes known synced: 8 referenced block\(s\) lost, read as zeros \(d: 8\)/);
  });

  it('a missing pool file is an error; blocks written after the last sync past the end are only a warning', async () => {
    const dir = await store();
    const pool = join(dir, `pool-${BS}.dat`);
    await rm(pool);
    const r = await checkStore(dir);
    expect(r.errors.join('\n')).toMatch(/pool-4096\.dat is missing, shorter than the 204800 bytes known synced: 50 referenced block\(s\) lost, read as zeros \(d: 40, d@s: 10\)/);

    // Growth never synced: written, its table entries committed, the pool not flushed, the daemon gone
    // (no clean close): past the synced length, so a warning (what a power cut may take).
    const dir2 = await store();
    const reg = await Registry.open({ dir: dir2 });
    await writeDisk(reg.ctx, reg.disk('d'), 50 * BS, fill(8, 3)); // new blocks 50..57
    await reg.ctx.drain();
    await reg.ctx.commit([], true); // tables durable, pool file not flushed and not recorded
    const pool2 = join(dir2, `pool-${BS}.dat`);
    // Simulate the power cut before leaving: the file loses what was never synced. (Close without cutting.)
    await reg.ctx.pool.settle();
    await reg.ctx.pool.close({ trim: false });
    await reg.ctx.db.close();
    await truncate(pool2, 50 * BS);
    const r2 = await checkStore(dir2);
    expect(r2.errors).toEqual([]);
    expect(r2.warnings.join('\n')).toMatch(/8 referenced block\(s\) past its end written since its last fsync/);
  });
});
