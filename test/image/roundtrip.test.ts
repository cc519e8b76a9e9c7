// Producer -> parser round trips, random access equivalence, chunk-size independence, laziness.

import { describe, it, expect } from 'vitest';
import { ImageProducer, crc32, formatInspection, inspectImage, parseImage, planImage, verifyImage } from '../../src/image/index.js';
import { chunked, collect, makeFixture, parseAll, prng, type Fixture } from './helpers.js';

async function expectRoundTrip(f: Fixture, src: Parameters<typeof parseAll>[0]): Promise<void> {
  const { events, error } = await parseAll(src);
  expect(error).toBeUndefined();
  const types = events.map((e) => e.type);
  expect(types[0]).toBe('header');
  expect(types[1]).toBe('tables');
  expect(types.at(-1)).toBe('end');
  const blocks = events.flatMap((e) => (e.type === 'block' ? [e] : []));
  expect(blocks.map((b) => b.lbn)).toEqual(Array.from(f.input.dataLbns));
  for (const b of blocks) expect(b.data.equals(f.blocks.get(b.lbn)!)).toBe(true);
  const zeros = events.flatMap((e) => (e.type === 'zero' ? [e.lbn] : []));
  expect(zeros).toEqual(Array.from(f.input.zeroLbns));
  // Order: all blocks, then zeros, then end.
  const firstZero = types.indexOf('zero');
  if (firstZero >= 0) expect(types.lastIndexOf('block')).toBeLessThan(firstZero);
}

describe('round trip', () => {
  it('full image: stream() parses back to exactly the blocks', async () => {
    const f = makeFixture({ seed: 1, slots: 600 }); // 3 groups, last one partial
    const bytes = await collect(f.producer.stream());
    expect(bytes.length).toBe(f.producer.size);
    expect(f.reads.count).toBe(600); // each block read exactly once, trailer needed no re-read
    await expectRoundTrip(f, [bytes]);
    const report = await verifyImage(f.producer.stream());
    expect(report).toMatchObject({ kind: 'full', slotCount: 600, zeroCount: 0, groupCount: 3, totalLength: bytes.length });
    expect(report.header).toMatchObject({ diskName: 'disk-α', snapName: 'snap1', snapId: 'id-1', snapCreated: 1_700_000_000_001 });
  });

  it('delta image with zero list, and an empty image', async () => {
    const f = makeFixture({ seed: 2, slots: 300, zeros: 50 });
    await expectRoundTrip(f, f.producer.stream());
    const e = makeFixture({ seed: 3, slots: 0, zeros: 0 });
    const bytes = await collect(e.producer.chunks());
    expect(bytes.length).toBe(4096 + 64);
    await expectRoundTrip(e, [bytes]);
    const d = makeFixture({ seed: 4, slots: 0, zeros: 9 });
    await expectRoundTrip(d, d.producer.stream());
  });

  it('is independent of input chunk sizes (1, 7, 3 MiB, irregular)', async () => {
    const small = makeFixture({ seed: 5, slots: 20, zeros: 4 });
    const sb = await collect(small.producer.stream());
    await expectRoundTrip(small, chunked(sb, 1));
    const f = makeFixture({ seed: 6, slots: 520, zeros: 30 });
    const bytes = await collect(f.producer.stream());
    await expectRoundTrip(f, chunked(bytes, 7));
    await expectRoundTrip(f, chunked(bytes, 3 << 20));
    await expectRoundTrip(f, chunked(bytes, [1, 4095, 4097, 65536, 13, 1 << 20]));
    await expectRoundTrip(f, [new Uint8Array(bytes)]);
  });

  it('random-access read() equals the streamed bytes at many offsets', async () => {
    const f = makeFixture({ seed: 7, slots: 700, zeros: 20 });
    const bytes = await collect(f.producer.stream());
    const fresh = new ImageProducer(planImage(f.input), async (lbn) => f.blocks.get(lbn)!);
    const rnd = prng(99);
    const ranges: Array<[number, number]> = [[0, 10], [bytes.length - 70, 200], [bytes.length - 1, 1],
      [bytes.length, 10], [bytes.length + 5, 10], [4090, 20000], [0, bytes.length + 100]];
    for (let i = 0; i < 300; i++) {
      const off = Math.floor(rnd() * bytes.length);
      ranges.push([off, Math.floor(rnd() * (rnd() < 0.2 ? 3 << 20 : 9000))]);
    }
    // Trailer first on a fresh producer (lazy group crcs), then everything, some concurrently.
    const t0 = await fresh.read(fresh.plan.groupTableOffset, 1 << 20);
    expect(t0.equals(bytes.subarray(fresh.plan.groupTableOffset))).toBe(true);
    const results = await Promise.all(ranges.slice(0, 50).map(([o, l]) => fresh.read(o, l)));
    for (const [i, [o, l]] of ranges.slice(0, 50).entries()) expect(results[i]!.equals(bytes.subarray(o, o + l))).toBe(true);
    for (const [o, l] of ranges) expect((await fresh.read(o, l)).equals(bytes.subarray(o, o + l))).toBe(true);
  });

  it('sequential read() in unaligned chunks reads each block once and learns all group crcs', async () => {
    const f = makeFixture({ seed: 8, slots: 600 });
    const p = f.producer;
    const parts: Buffer[] = [];
    for (let pos = 0; pos < p.size; pos += 100_003) parts.push(await p.read(pos, 100_003));
    expect(f.reads.count).toBe(600);
    await expectRoundTrip(f, [Buffer.concat(parts)]);
  });

  it('pieceCrcs: each block comes with its pieces\' CRC-32s, the groups still checked (combined from them)', async () => {
    const f = makeFixture({ seed: 10, slots: 600, blockSize: 8192 }); // 5 groups of 128 blocks, the last one partial
    const bytes = await collect(f.producer.stream());
    const seen: number[] = [];
    const report = await parseImage([bytes], {
      block: (lbn, data, _slot, crcs) => {
        expect(data.equals(f.blocks.get(lbn)!)).toBe(true);
        expect(Array.from(crcs!)).toEqual([crc32(data.subarray(0, 4096)), crc32(data.subarray(4096))]);
        seen.push(lbn);
      },
    }, { pieceCrcs: 4096 });
    expect(report.groupCount).toBe(5);
    expect(f.producer.plan.groupBlocks).toBe(128);
    expect(seen).toEqual(Array.from(f.input.dataLbns));
    // a changed byte in the last group's data is still refused at the end
    const bad = Buffer.from(bytes);
    bad[f.producer.plan.dataOffset + 599 * 8192 + 5]! ^= 1;
    await expect(parseImage([bad], {}, { pieceCrcs: 4096 })).rejects.toThrow(/data group 4 .*data checksum mismatch/);
    // a size that does not divide the block is ignored (no crcs, one CRC per group as before)
    await parseImage([bytes], { block: (_l, _d, _s, crcs) => expect(crcs).toBeUndefined() }, { pieceCrcs: 3000 });
  });

  it('parseImage callbacks and inspectImage', async () => {
    const f = makeFixture({ seed: 9, slots: 40, zeros: 5 });
    const calls: string[] = [];
    const report = await parseImage(f.producer.stream(), {
      header: (h) => { calls.push(`header ${h.kind}`); },
      block: async (lbn) => { calls.push(`block ${lbn}`); },
      zero: (lbn) => { calls.push(`zero ${lbn}`); },
      end: () => { calls.push('end'); },
    });
    expect(report.slotCount).toBe(40);
    expect(calls.length).toBe(1 + 40 + 5 + 1);
    expect(calls.at(-1)).toBe('end');
    const ins = await inspectImage(f.producer.stream());
    expect(ins.slots.map((s) => s.lbn)).toEqual(Array.from(f.input.dataLbns));
    expect(ins.slots.map((s) => s.pbn)).toEqual(Array.from(f.input.sourcePbns));
    expect(ins.zeros).toEqual(Array.from(f.input.zeroLbns));
    expect(ins.header).toMatchObject({ kind: 'delta', baseSnapId: 'base-id', baseSnapName: 'base' });
    const text = formatInspection(await inspectImage(f.producer.stream(), { verify: true }), 5);
    expect(text).toContain('verified:');
    expect(text).toContain('... 35 more slots');
    expect(text).toContain('base snapshot:     base (id base-id)');
  });
});
