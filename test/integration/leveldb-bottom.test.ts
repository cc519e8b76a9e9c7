// A real mount of a store whose block data lives inside LevelDB (`--block-store leveldb`): dd at unaligned
// offsets and odd block sizes, read back byte-exact, again after a remount; no pool files; the bottom is
// fixed at creation, so `--block-store file` (or `-o block_store=file`) on that store fails clearly.

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readdir } from 'node:fs/promises';
import { M, VdiskMount, ddRead, ddWrite, isMountpoint, randomBuffer, readRange, requireBuild, teardownAll, vdiskfs } from './helpers.js';

let m: VdiskMount;
let scratch: string;

beforeAll(async () => {
  requireBuild();
  m = await VdiskMount.create({ extraArgs: ['--block-store', 'leveldb'] });
  scratch = await m.scratch('scratch');
});

afterAll(async () => {
  await teardownAll();
});

const models = new Map<string, Buffer>();

async function expectDiskEquals(name: string): Promise<void> {
  const model = models.get(name)!;
  const got = await readRange(m.disk(name), 0, model.length + 4096);
  expect(got.length, `${name} size`).toBe(model.length);
  if (!got.equals(model)) {
    let i = 0;
    while (got[i] === model[i]) i++;
    expect.fail(`${name} differs from the model at byte ${i} (got ${got[i]}, want ${model[i]})`);
  }
}

async function expectAllDisks(): Promise<void> {
  for (const name of models.keys()) await expectDiskEquals(name);
}

describe('a mount with block data in LevelDB', () => {
  it('creates the store with the LevelDB bottom and no pool files', async () => {
    await m.ctlOk('create big 8M');
    await m.ctlOk('create small 3M block-size=4K');
    await m.ctlOk('create odd 2M block-size=128K');
    for (const [name, size] of [['big', 8 * M], ['small', 3 * M], ['odd', 2 * M]] as const) models.set(name, Buffer.alloc(size));
    expect((await m.status()).pool.blockStore).toBe('leveldb');
    expect(await m.statusText()).toMatch(/block data in LevelDB/);
  });

  it('dd at unaligned offsets and odd lengths reads back byte-exact', async () => {
    let seed = 100;
    const writes: [string, number, number, number][] = [
      // disk, offset, length, dd bs
      ['big', 12_345, 200_000, 65536],
      ['big', 65_535, 3, 1],
      ['big', 131_072 - 100, 70_000, 4096],
      ['big', 8 * M - 77_777, 77_777, 1000],
      ['big', 150_000, 1_000_000, 131072], // overlaps earlier writes
      ['small', 1, 4094, 512],
      ['small', 4095, 2, 2],
      ['small', 3 * M - 5000, 5000, 65536],
      ['small', 1 * M + 7, 123_457, 65536],
      ['odd', 131_071, 131_074, 65536],
      ['odd', 17, 33, 7],
      ['odd', 2 * M - 1, 1, 1],
    ];
    for (const [name, off, len, bs] of writes) {
      const data = randomBuffer(seed++, len);
      const r = await ddWrite(scratch, m.disk(name), off, data, { bs, fsync: seed % 3 === 0 });
      expect(r.code, `dd into ${name} at ${off}: ${r.stderr}`).toBe(0);
      data.copy(models.get(name)!, off);
    }
    // a zero write that empties part of a block and all of another
    const zeros = Buffer.alloc(200_000);
    expect((await ddWrite(scratch, m.disk('big'), 100_000, zeros, { bs: 65536 })).code).toBe(0);
    zeros.copy(models.get('big')!, 100_000);
    await expectAllDisks();
    // dd reads at unaligned offsets
    for (const [name, off, len] of [['big', 12_340, 300_000], ['small', 4093, 9], ['odd', 131_000, 200_000]] as const) {
      const got = await ddRead(scratch, m.disk(name), off, len, 4096);
      expect(got.equals(models.get(name)!.subarray(off, off + len)), `dd read of ${name} at ${off}+${len}`).toBe(true);
    }
    expect((await readdir(m.store)).filter((f) => f.startsWith('pool-'))).toEqual([]);
  });

  it('reads the same after a remount, which keeps the LevelDB bottom', async () => {
    await m.remount();
    expect((await m.status()).pool.blockStore).toBe('leveldb');
    await expectAllDisks();
    // and writes after the remount land too
    const data = randomBuffer(999, 70_001);
    expect((await ddWrite(scratch, m.disk('small'), 9_999, data, { bs: 4096, fsync: true })).code).toBe(0);
    data.copy(models.get('small')!, 9_999);
    await expectAllDisks();
  });

  it('refuses to mount the store with --block-store file or -o block_store=file, naming both bottoms', async () => {
    await m.unmount();
    for (const args of [['--block-store', 'file'], ['-o', 'block_store=file']]) {
      const r = await vdiskfs(['mount', m.mp, '--store', m.store, ...args]);
      expect(r.code, `mount ${args.join(' ')} must fail`).not.toBe(0);
      expect(r.stderr).toMatch(/keeps its block data in 'leveldb'.*not 'file'/);
      expect(await isMountpoint(m.mp)).toBe(false);
    }
    // an offline command that would create the store refuses it too (exit 2: INVALID)
    const c = await vdiskfs(['create', 'x', '1M', '--store', m.store, '--block-store', 'file']);
    expect(c.code).toBe(2);
    expect(c.stderr).toMatch(/'leveldb'.*'file'/);
    const bad = await vdiskfs(['mount', m.mp, '--store', m.store, '--block-store', 'sqlite']);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toMatch(/unknown block store 'sqlite'/);
    // the store is intact: check is clean and a mount without the option finds the LevelDB bottom
    const chk = await vdiskfs(['check', '--store', m.store]);
    expect(chk.code, chk.stdout).toBe(0);
    expect(chk.stdout).toMatch(/block values in LevelDB/);
    await m.mount();
    expect((await m.status()).pool.blockStore).toBe('leveldb');
    await expectAllDisks();
  });

  it('a new store made by the offline CLI with --block-store leveldb is a LevelDB store', async () => {
    const other = await m.scratch('store2');
    const c = await vdiskfs(['create', 'd', '1M', '--store', other, '--block-store', 'leveldb']);
    expect(c.code, c.stderr).toBe(0);
    const st = await vdiskfs(['status', '--json', '--store', other]);
    expect(JSON.parse(st.stdout).pool.blockStore).toBe('leveldb');
  });
});
