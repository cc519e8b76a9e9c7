// Format version 2 (slots in source physical order) against version 1 (ascending lbn order): the writer's
// order, the reader's checks for each, v1 images still read, and the pure planning helpers (physicalOrder,
// pbnRuns) and the producer's piece reads.

import { describe, it, expect } from 'vitest';
import { HEADER_FIELDS, ImageError, ImageProducer, TRAILER_FIELDS, crc32, planImage, verifyImage, type ImagePlanInput } from '../../src/image/index.js';
import { pbnRuns, physicalOrder } from '../../src/image/layout.js';
import { byLbn } from '../../src/disk/landing.js';
import { collect, parseAll, prng, randomBytes } from './helpers.js';

const BS = 4096;

/** An input whose pbns are a seeded permutation (physical order unrelated to logical order). */
function shuffledInput(seed: number, slots: number, version?: 1 | 2): { input: ImagePlanInput; blocks: Map<number, Buffer> } {
  const rnd = prng(seed);
  const lbns = new Set<number>();
  while (lbns.size < slots) lbns.add(Math.floor(rnd() * slots * 4));
  const dataLbns = [...lbns].sort((a, b) => a - b);
  const pbns = dataLbns.map((_, i) => i * 2 + 100);
  for (let i = pbns.length - 1; i > 0; i--) {
    const j = Math.floor(rnd() * (i + 1));
    [pbns[i], pbns[j]] = [pbns[j]!, pbns[i]!];
  }
  const blocks = new Map(dataLbns.map((l) => [l, randomBytes(rnd, BS)] as const));
  return {
    blocks,
    input: { kind: 'full', virtualSize: slots * 4 * BS, blockSize: BS, dataLbns, sourcePbns: pbns, zeroLbns: [],
      sourceAllocated: slots, diskName: 'd', snapName: 's', snapId: `id${seed}`, snapCreated: 1, ...(version ? { version } : {}) },
  };
}

async function imageOf(input: ImagePlanInput, blocks: Map<number, Buffer>): Promise<Buffer> {
  return collect(new ImageProducer(planImage(input), async (lbn) => blocks.get(lbn)!).stream());
}

/** Rewrite lbn table entry i of an image and reseal tablesCrc (header + trailer) like a buggy writer would. */
function withLbn(image: Buffer, i: number, lbn: number): Buffer {
  const b = Buffer.from(image);
  const h = b.subarray(0, 4096);
  const lbnTable = Number(h.readBigUInt64BE(HEADER_FIELDS.lbnTableOffset));
  const dataOffset = Number(h.readBigUInt64BE(HEADER_FIELDS.dataOffset));
  const trailer = Number(h.readBigUInt64BE(HEADER_FIELDS.trailerOffset));
  b.writeBigUInt64BE(BigInt(lbn), lbnTable + 8 * i);
  const tc = crc32(b.subarray(lbnTable, dataOffset));
  h.writeUInt32BE(tc, HEADER_FIELDS.tablesCrc);
  h.writeUInt32BE(0, HEADER_FIELDS.headerCrc);
  const hc = crc32(h);
  h.writeUInt32BE(hc, HEADER_FIELDS.headerCrc);
  const t = b.subarray(trailer);
  t.writeUInt32BE(hc, TRAILER_FIELDS.headerCrc);
  t.writeUInt32BE(tc, TRAILER_FIELDS.tablesCrc);
  t.writeUInt32BE(crc32(t.subarray(0, TRAILER_FIELDS.trailerCrc)), TRAILER_FIELDS.trailerCrc);
  return b;
}

describe('image format versions', () => {
  it('version 2 (the default) orders slots by source pbn; every block still comes back at its lbn', async () => {
    const { input, blocks } = shuffledInput(1, 700);
    const plan = planImage(input);
    expect(plan.version).toBe(2);
    for (let i = 1; i < plan.slotCount; i++) expect(plan.pbns[i]!).toBeGreaterThan(plan.pbns[i - 1]!);
    const image = await imageOf(input, blocks);
    expect(image.readUInt32BE(HEADER_FIELDS.version)).toBe(2);
    const { events, error } = await parseAll([image]);
    expect(error).toBeUndefined();
    const got = events.flatMap((e) => (e.type === 'block' ? [e] : []));
    expect(got.map((e) => e.lbn)).toEqual(Array.from(plan.lbns));
    expect([...got.map((e) => e.lbn)].sort((a, b) => a - b)).toEqual(input.dataLbns);
    for (const e of got) expect(e.data.equals(blocks.get(e.lbn)!)).toBe(true);
  });

  it('version 1 images are still written on request and read: ascending lbns, same blocks', async () => {
    const { input, blocks } = shuffledInput(2, 300, 1);
    const image = await imageOf(input, blocks);
    expect(image.readUInt32BE(HEADER_FIELDS.version)).toBe(1);
    expect(image.readUInt32BE(Number(image.readBigUInt64BE(HEADER_FIELDS.trailerOffset)) + TRAILER_FIELDS.version)).toBe(1);
    const report = await verifyImage([image]);
    expect(report.header.version).toBe(1);
    const { events } = await parseAll([image]);
    const got = events.flatMap((e) => (e.type === 'block' ? [e] : []));
    expect(got.map((e) => e.lbn)).toEqual(input.dataLbns);
    for (const e of got) expect(e.data.equals(blocks.get(e.lbn)!)).toBe(true);
  });

  it('a version 1 image must keep its lbns ascending; a version 2 one may not repeat an lbn', async () => {
    const v1 = shuffledInput(3, 50, 1);
    const img1 = await imageOf(v1.input, v1.blocks);
    const bad1 = await parseAll([withLbn(img1, 5, v1.input.dataLbns[3]! as number)]);
    expect((bad1.error as ImageError).where).toBe('lbnTable entry 5');
    const v2 = shuffledInput(3, 50);
    const plan2 = planImage(v2.input);
    const img2 = await imageOf(v2.input, v2.blocks);
    // out of order is fine in v2 (it is the normal case), a repeated lbn is not
    const dup = await parseAll([withLbn(img2, 7, plan2.lbns[2]!)]);
    expect(dup.error).toBeInstanceOf(ImageError);
    expect((dup.error as ImageError).where).toMatch(/^lbnTable entry (2|7)$/);
    const range = await parseAll([withLbn(img2, 7, 50 * 4 + 1)]);
    expect((range.error as ImageError).where).toBe('lbnTable entry 7');
  });

  it('physicalOrder sorts slots by pbn and keeps the pairs', () => {
    const l = Float64Array.from([1, 2, 3, 4, 5]);
    const p = Float64Array.from([50, 10, 40, 20, 30]);
    physicalOrder(l, p);
    expect(Array.from(p)).toEqual([10, 20, 30, 40, 50]);
    expect(Array.from(l)).toEqual([2, 4, 5, 3, 1]);
    const l2 = Float64Array.from([7, 8]);
    const p2 = Float64Array.from([1, 2]);
    physicalOrder(l2, p2); // already ordered: unchanged
    expect(Array.from(l2)).toEqual([7, 8]);
  });

  it('pbnRuns coalesces physically adjacent slots, capped', () => {
    const pbns = [5, 6, 7, 9, 10, 20, 21, 22, 23, 2];
    expect(pbnRuns(pbns, 0, pbns.length)).toEqual([[0, 3], [3, 2], [5, 4], [9, 1]]);
    expect(pbnRuns(pbns, 1, 7)).toEqual([[1, 2], [3, 2], [5, 2]]);
    expect(pbnRuns(pbns, 5, 9, 3)).toEqual([[5, 3], [8, 1]]);
    expect(pbnRuns(pbns, 4, 4)).toEqual([]);
  });

  it('the producer reads whole pieces through a SlotReader, each slot once on a sequential pass', async () => {
    const { input, blocks } = shuffledInput(4, 1000);
    const plan = planImage(input);
    const calls: Array<[number, number]> = [];
    const p = new ImageProducer(plan, {
      readSlots: async (first, count, dst) => {
        calls.push([first, count]);
        for (let i = 0; i < count; i++) blocks.get(plan.lbns[first + i]!)!.copy(dst, i * BS);
      },
    }, { pieceBytes: 1 << 20, pieces: 4, readAhead: 2 });
    const viaPieces = await collect(p.stream());
    expect(viaPieces.equals(await imageOf(input, blocks))).toBe(true);
    // 1 MiB pieces of 4 KiB slots: 256 slots each, every piece read once, in order
    expect(calls).toEqual([[0, 256], [256, 256], [512, 256], [768, 232]]);
    // random access with a small cache re-reads pieces as needed and returns the same bytes
    for (const [o, l] of [[p.plan.dataOffset + 5 * BS - 3, 9000], [0, 100], [p.size - 70, 70]] as const) {
      expect((await p.read(o, l)).equals(viaPieces.subarray(o, o + l))).toBe(true);
    }
  });

  it('a SlotReader that returns its slots\' CRC-32s gives the same image (group CRCs combined from them)', async () => {
    const { input, blocks } = shuffledInput(5, 1000);
    const plan = planImage(input);
    const read = (first: number, count: number, dst: Buffer): void => {
      for (let i = 0; i < count; i++) blocks.get(plan.lbns[first + i]!)!.copy(dst, i * BS);
    };
    const crcs = new ImageProducer(plan, {
      readSlots: async (first, count, dst) => {
        read(first, count, dst);
        return Uint32Array.from({ length: count }, (_, i) => crc32(dst.subarray(i * BS, (i + 1) * BS)));
      },
    }, { pieceBytes: 1 << 20, pieces: 4, readAhead: 2 });
    const bytes = await collect(crcs.stream());
    expect(bytes.equals(await imageOf(input, blocks))).toBe(true);
    expect(plan.groupCount).toBeGreaterThan(1);
    // a wrong CRC from the reader goes into that group's entry of the trailer, so verify refuses the image
    const lying = new ImageProducer(plan, {
      readSlots: async (first, count, dst) => {
        read(first, count, dst);
        return Uint32Array.from({ length: count }, (_, i) => crc32(dst.subarray(i * BS, (i + 1) * BS)) ^ (first + i === 300 ? 1 : 0));
      },
    }, { pieceBytes: 1 << 20, pieces: 4, readAhead: 2 });
    await expect(verifyImage(lying.stream())).rejects.toThrow(/crc|checksum/i);
  });

  it('restore commits in lbn order (byLbn)', () => {
    expect(byLbn([9, 3, 5], [1, 2, 3])).toEqual([[3, 5, 9], [2, 3, 1]]);
  });
});
