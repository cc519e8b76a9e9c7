// The format record of `rados` stores (meta/db.ts, KEYSPACE.md version 7), without a cluster: what is
// recorded at creation, what a later open takes from it, and what is refused.
import { afterAll, describe, expect, it } from 'vitest';
import { openDb, DEFAULT_CEPH_CONF } from '../../src/meta/db.js';
import { FORMAT_KEY, STORE_VERSION_RADOS } from '../../src/meta/keys.js';
import { cleanupDirs, tempDir } from './helpers.js';

afterAll(cleanupDirs);

describe('rados stores: the format record', () => {
  it('records version 7, the pool, the conf and a prefix; later opens need no flag and may name another conf', async () => {
    const dir = await tempDir();
    const a = await openDb(dir, { rados: { pool: 'p1', conf: '/etc/x/ceph.conf' } });
    expect(a.blockStore).toBe('rados');
    expect(a.rados).toMatchObject({ pool: 'p1', conf: '/etc/x/ceph.conf', prefix: expect.stringMatching(/^vdiskfs\.[0-9a-f-]{13}$/) });
    const rec = JSON.parse((await a.db.get(FORMAT_KEY))!) as { version: number; rados: unknown };
    expect(rec.version).toBe(STORE_VERSION_RADOS);
    await a.db.close();
    const b = await openDb(dir);
    expect(b.rados).toEqual(a.rados);
    await b.db.close();
    const c = await openDb(dir, { rados: { conf: '/other/ceph.conf' } });
    expect(c.rados).toEqual({ ...a.rados, conf: '/other/ceph.conf' });
    await c.db.close();
    const d = await openDb(dir); // the override was for that open only
    expect(d.rados!.conf).toBe('/etc/x/ceph.conf');
    await d.db.close();
  });

  it('refuses a new rados store without a pool, another pool, rados flags for a file store, and a rados record gone', async () => {
    const dir = await tempDir();
    await expect(openDb(dir, { blockStore: 'rados' })).rejects.toMatchObject({ code: 'INVALID', message: expect.stringMatching(/needs its Ceph pool: --rados-pool/) });
    const a = await openDb(dir, { blockStore: 'rados', rados: { pool: 'p1' } });
    expect(a.rados!.conf).toBe(DEFAULT_CEPH_CONF);
    await a.db.close();
    await expect(openDb(dir, { rados: { pool: 'p2' } })).rejects.toMatchObject({ code: 'INVALID', message: expect.stringMatching(/keeps its blocks in Ceph pool 'p1', not 'p2'/) });
    await expect(openDb(dir, { blockStore: 'file' })).rejects.toMatchObject({ code: 'INVALID' });
    const fileDir = await tempDir();
    await expect(openDb(fileDir, { blockStore: 'file', rados: { pool: 'p1' } })).rejects.toMatchObject({ code: 'INVALID', message: expect.stringMatching(/are for --block-store rados/) });
    // a version-7 record without its rados field is damage, not a file store
    const b = await openDb(dir);
    const rec = JSON.parse((await b.db.get(FORMAT_KEY))!) as Record<string, unknown>;
    delete rec.rados;
    await b.db.put(FORMAT_KEY, JSON.stringify(rec));
    await b.db.close();
    await expect(openDb(dir)).rejects.toMatchObject({ code: 'CORRUPT' });
  });
});
