/**
 * Images without restoring them (image/seekable.ts, image/merge.ts): a chain of a full image and deltas
 * read at random offsets equals the last snapshot; a merged image restores to exactly what restoring the
 * full image and applying each delta gives; broken links, damaged data and pipes are refused clearly.
 */
import { describe, it, expect, afterAll, beforeAll } from 'vitest';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { spawn } from 'node:child_process';
import { Registry } from '../../src/disk/registry.js';
import type { DiskState } from '../../src/disk/context.js';
import { writeDisk, readView } from '../../src/disk/io.js';
import { findTarget, producerFor } from '../../src/image/snapshotImage.js';
import { restoreRecorded } from '../../src/restore/restore.js';
import { ImageChain } from '../../src/image/seekable.js';
import { mergeChain } from '../../src/image/merge.js';
import { compareImage, storeSide } from '../../src/image/compare.js';
import { ImageError } from '../../src/image/imageError.js';
import { decodeHeader } from '../../src/image/header.js';
import { prng, randomBytes, tempDir, cleanupDirs } from '../unit/helpers.js';

const K = 1024;
const BS = 4 * K; // 4 KiB blocks: 256 blocks per checksum group, so an image has several groups
const SIZE = 8 * 1024 * K;

async function image(reg: Registry, snap: string, base?: string): Promise<Buffer> {
  const p = await producerFor(findTarget(reg, 'd', snap, base));
  const parts: Buffer[] = [];
  for await (const c of p.chunks()) parts.push(Buffer.from(c));
  return Buffer.concat(parts);
}

async function bytesOf(p: AsyncIterable<Uint8Array> | { chunks(): AsyncIterable<Uint8Array> }): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of 'chunks' in p ? p.chunks() : p) parts.push(Buffer.from(c));
  return Buffer.concat(parts);
}

async function readAll(reg: Registry, d: DiskState, snap = -1): Promise<Buffer> {
  const size = snap >= 0 ? d.rec.snapshots[snap]!.size : d.rec.size;
  const b = Buffer.alloc(size);
  return b.subarray(0, await readView(reg.ctx, d, snap, 0, b));
}

interface World {
  reg: Registry;
  dir: string;
  /** full s1, delta s1..s2, delta s2..s3 as files */
  files: string[];
  /** d@s3 as bytes */
  s3: Buffer;
}

/** d: scattered writes, s1; overwrites and a zeroed block, s2; a shrink, more writes, s3. */
async function world(): Promise<World> {
  const rnd = prng(18);
  const dir = await tempDir();
  const reg = await Registry.open({ dir: join(dir, 'store') });
  await reg.create('d', SIZE, BS);
  const d = reg.disk('d');
  for (let i = 0; i < 40; i++) await writeDisk(reg.ctx, d, Math.floor(rnd() * (SIZE - 64 * K)), randomBytes(rnd, 1 + Math.floor(rnd() * 60 * K)));
  await reg.snapshot('d', 's1');
  for (let i = 0; i < 20; i++) await writeDisk(reg.ctx, d, Math.floor(rnd() * (SIZE - 64 * K)), randomBytes(rnd, 1 + Math.floor(rnd() * 60 * K)));
  await writeDisk(reg.ctx, d, 3 * BS, Buffer.alloc(2 * BS)); // blocks that become holes (zero list)
  await reg.snapshot('d', 's2');
  await reg.resize('d', SIZE - 1024 * K); // blocks past the new end are dropped by the next delta
  for (let i = 0; i < 10; i++) await writeDisk(reg.ctx, d, Math.floor(rnd() * (SIZE - 1100 * K)), randomBytes(rnd, 1 + Math.floor(rnd() * 60 * K)));
  await reg.snapshot('d', 's3');
  const files = [join(dir, 'full.img'), join(dir, 'd12.img'), join(dir, 'd23.img')];
  await writeFile(files[0]!, await image(reg, 's1'));
  await writeFile(files[1]!, await image(reg, 's2', 's1'));
  await writeFile(files[2]!, await image(reg, 's3', 's2'));
  return { reg, dir, files, s3: await readAll(reg, d, 2) };
}

describe('image chains', () => {
  let w: World;
  beforeAll(async () => {
    w = await world();
  });
  afterAll(async () => {
    await w?.reg.close();
    await cleanupDirs();
  });

  it('a full image and two deltas read at random offsets exactly as the last snapshot', async () => {
    const chain = await ImageChain.open(w.files);
    try {
      expect(chain.virtualSize).toBe(w.s3.length);
      const rnd = prng(5);
      for (let i = 0; i < 300; i++) {
        const pos = Math.floor(rnd() * w.s3.length);
        const len = 1 + Math.floor(rnd() * 3 * BS);
        const b = Buffer.alloc(len, 0xee);
        const n = await chain.read(b, pos);
        expect(n).toBe(Math.min(len, w.s3.length - pos));
        expect(b.subarray(0, n).equals(w.s3.subarray(pos, pos + n))).toBe(true);
      }
      const all = Buffer.alloc(w.s3.length);
      expect(await chain.read(all, 0)).toBe(w.s3.length);
      expect(all.equals(w.s3)).toBe(true);
    } finally {
      await chain.close();
    }
  });

  it('merge gives one full image of the last snapshot: it restores to exactly d@s3 and takes the next delta', async () => {
    const chain = await ImageChain.open(w.files);
    let merged: Buffer;
    try {
      merged = await bytesOf(mergeChain(chain));
    } finally {
      await chain.close();
    }
    const sequential = await Registry.open({ dir: join(w.dir, 'seq') });
    const viaMerge = await Registry.open({ dir: join(w.dir, 'merged') });
    try {
      await restoreRecorded(sequential, [await readFile(w.files[0]!)], { mode: 'new', name: 'r' });
      for (const f of w.files.slice(1)) await restoreRecorded(sequential, [await readFile(f)], { mode: 'into', name: 'r' });
      const res = await restoreRecorded(viaMerge, [merged], { mode: 'new', name: 'r' });
      expect(res.kind).toBe('full');
      expect(res.snapId).toBe(w.reg.disk('d').rec.snapshots[2]!.uid);
      const a = await readAll(sequential, sequential.disk('r'));
      const b = await readAll(viaMerge, viaMerge.disk('r'));
      expect(a.equals(w.s3)).toBe(true);
      expect(b.equals(w.s3)).toBe(true);
      // the merged image carries the last snapshot's identity: a delta after it applies
      await w.reg.snapshot('d', 's4');
      await writeDisk(w.reg.ctx, w.reg.disk('d'), 0, Buffer.alloc(BS, 7));
      await w.reg.snapshot('d', 's5');
      await restoreRecorded(viaMerge, [await image(w.reg, 's5', 's3')], { mode: 'into', name: 'r' });
      expect((await readAll(viaMerge, viaMerge.disk('r'))).equals(await readAll(w.reg, w.reg.disk('d'), 4))).toBe(true);
    } finally {
      await sequential.close();
      await viaMerge.close();
    }
  });

  it('a missing or misplaced link is refused at open, naming it', async () => {
    await expect(ImageChain.open([w.files[0]!, w.files[2]!])).rejects.toThrow(/applies onto snapshot s2 .*holds s1.*missing or out of order/);
    await expect(ImageChain.open([w.files[1]!])).rejects.toThrow(/starts with a full image/);
    await expect(ImageChain.open([w.files[0]!, w.files[0]!])).rejects.toThrow(/only the first image of a chain may be full/);
  });

  it('damaged data is CORRUPT at its checksum group only; a truncated image or a pipe is refused at open', async () => {
    const full = await readFile(w.files[0]!);
    const h = decodeHeader(full.subarray(0, 4096));
    expect(h.groupCount).toBeGreaterThan(1);
    const bad = Buffer.from(full);
    bad[h.dataOffset + 10]! ^= 0xff; // slot 0: group 0
    const badFile = join(w.dir, 'bad.img');
    await writeFile(badFile, bad);
    const chain = await ImageChain.open([badFile]);
    try {
      const lbn0 = chain.images[0]!.tables.lbns[0]!;
      const err = await chain.read(Buffer.alloc(BS), lbn0 * BS).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(ImageError);
      expect((err as ImageError).code).toBe('CORRUPT');
      expect((err as Error).message).toMatch(/data group 0/);
      // a block of the last group reads fine
      const t = chain.images[0]!.tables;
      const lastLbn = t.lbns[t.lbns.length - 1]!;
      const ok = Buffer.alloc(BS);
      await chain.read(ok, lastLbn * BS);
      const fresh = await ImageChain.open([w.files[0]!]);
      const want = Buffer.alloc(BS);
      await fresh.read(want, lastLbn * BS);
      await fresh.close();
      expect(ok.equals(want)).toBe(true);
      await expect(bytesOf(mergeChain(chain))).rejects.toThrow(/data group 0/);
    } finally {
      await chain.close();
    }
    const cut = join(w.dir, 'cut.img');
    await writeFile(cut, full.subarray(0, full.length - 100));
    await expect(ImageChain.open([cut])).rejects.toThrow(/truncated/);
    // a FIFO: refused without waiting for a writer
    const fifo = join(w.dir, 'fifo');
    await new Promise<void>((res, rej) => spawn('mkfifo', [fifo]).on('exit', (c) => (c === 0 ? res() : rej(new Error(`mkfifo ${c}`)))));
    await expect(ImageChain.open([fifo])).rejects.toThrow(/not a pipe or a tape/);
  });

  it('verify --against: an image matches the snapshot it was made of, and not another one', async () => {
    const cmp = async (file: number, snap: string) => compareImage([await readFile(w.files[file]!)], storeSide(w.reg, 'd', snap));
    const ok = await cmp(0, 's1');
    expect(ok.difference).toBeUndefined();
    expect(ok.otherId).toBeUndefined();
    expect(ok.blocks).toBeGreaterThan(0);
    expect((await cmp(1, 's2')).difference).toBeUndefined();
    expect((await cmp(2, 's3')).difference).toBeUndefined();
    const wrong = await cmp(0, 's2');
    expect(wrong.otherId).toBe(w.reg.disk('d').rec.snapshots[0]!.uid);
    expect(wrong.difference?.why).toMatch(/differs from d@s2|holds data the image does not have|makes block/);
    // the delta s1..s2 against s3: its base is s1, and s3 changed blocks since that the image lacks
    const lacking = await cmp(1, 's3');
    expect(lacking.difference).toBeDefined();
  });
});
