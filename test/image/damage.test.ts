// Damaged images: every defect must make the parser throw ImageError CORRUPT and never emit end.

import { describe, it, expect } from 'vitest';
import { HEADER_FIELDS, ImageError, TRAILER_FIELDS, crc32, type ImageSource } from '../../src/image/index.js';
import { chunked, collect, makeFixture, parseAll, prng, randomBytes } from './helpers.js';

const f = makeFixture({ seed: 11, slots: 300, zeros: 12 }); // 2 groups, delta
const image = await collect(f.producer.stream());
const p = f.producer.plan;

async function expectCorrupt(src: ImageSource, where?: RegExp, offset?: number): Promise<ImageError> {
  const { events, error } = await parseAll(src);
  expect(events.some((e) => e.type === 'end')).toBe(false);
  expect(error).toBeInstanceOf(ImageError);
  const e = error as ImageError;
  expect(e.code).toBe('CORRUPT');
  if (where) expect(e.where).toMatch(where);
  if (offset !== undefined) expect(e.offset).toBe(offset);
  return e;
}

function flipped(at: number, mask = 0x10): Buffer {
  const b = Buffer.from(image);
  b[at]! ^= mask;
  return b;
}

/** Patch the header, then re-seal header crc, trailer headerCrc and trailer crc (a "valid" foreign edit). */
function resealed(edit: (h: Buffer) => void): Buffer {
  const b = Buffer.from(image);
  const h = b.subarray(0, 4096);
  edit(h);
  h.writeUInt32BE(0, HEADER_FIELDS.headerCrc);
  const hc = crc32(h);
  h.writeUInt32BE(hc, HEADER_FIELDS.headerCrc);
  const t = b.subarray(p.trailerOffset);
  t.writeUInt32BE(hc, TRAILER_FIELDS.headerCrc);
  t.writeUInt32BE(crc32(t.subarray(0, TRAILER_FIELDS.trailerCrc)), TRAILER_FIELDS.trailerCrc);
  return b;
}

describe('damage detection', () => {
  it('the undamaged fixture parses', async () => {
    expect((await parseAll([image])).error).toBeUndefined();
  });

  it('names the region of a flipped byte', async () => {
    await expectCorrupt([flipped(0)], /^header\.magic$/, 0);
    await expectCorrupt([flipped(HEADER_FIELDS.blockSize + 2)], /^header$/, 0);
    await expectCorrupt([flipped(HEADER_FIELDS.snapId + 3)], /^header$/);
    await expectCorrupt([flipped(4000)], /^header$/); // reserved bytes are covered too
    await expectCorrupt([flipped(p.lbnTableOffset + 8 * 7 + 7, 0x01)], /^(lbnTable entry 7|tables)$/);
    await expectCorrupt([flipped(p.lbnTableOffset + 8 * 7, 0x40)], /^lbnTable entry 7$/, p.lbnTableOffset + 56);
    await expectCorrupt([flipped(p.pbnTableOffset + 8 * 100 + 6)], /^tables$/, p.lbnTableOffset);
    await expectCorrupt([flipped(p.zeroTableOffset + 8 * 11 + 7, 0x01)], /^(zeroTable entry 11|tables)$/);
    await expectCorrupt([flipped(p.tablesEnd + 1)], /^tables$/);
    const e = await expectCorrupt([flipped(p.dataOffset + 4096 * 280 + 17)], /^data group 1/);
    expect(e.offset).toBe(p.dataOffset + 256 * 4096);
    await expectCorrupt([flipped(p.dataOffset)], /^data group 0/, p.dataOffset);
    await expectCorrupt([flipped(p.groupTableOffset + 5)], /^groupTable$/, p.groupTableOffset);
    await expectCorrupt([flipped(p.trailerOffset + 20)], /^trailer$/, p.trailerOffset);
    await expectCorrupt([flipped(p.trailerOffset + 1)], /^trailer\.magic$/, p.trailerOffset);
    await expectCorrupt([flipped(p.totalLength - 1)], /^trailer$/);
  });

  it('detects a flipped bit at offsets sampled across the whole image', async () => {
    const rnd = prng(5);
    const offsets = new Set<number>();
    for (let o = 0; o < image.length; o += 7001) offsets.add(o);
    for (let o = p.groupTableOffset; o < image.length; o++) offsets.add(o);
    for (let o = 0; o < 200; o++) offsets.add(Math.floor(rnd() * 4096));
    for (const o of offsets) await expectCorrupt([flipped(o, 1 << Math.floor(rnd() * 8))]);
  });

  it('detects truncation at any offset', async () => {
    const rnd = prng(6);
    const cuts = [0, 1, 8, 15, 16, 100, 4095, 4096, 4100, p.pbnTableOffset + 3, p.zeroTableOffset, p.tablesEnd,
      p.dataOffset - 1, p.dataOffset, p.dataOffset + 4096, p.dataOffset + 123456, p.groupTableOffset,
      p.groupTableOffset + 1, p.trailerOffset, p.trailerOffset + 32, image.length - 1];
    for (let i = 0; i < 40; i++) cuts.push(Math.floor(rnd() * image.length));
    for (const cut of cuts) {
      const e = await expectCorrupt(chunked(image.subarray(0, cut), 5000));
      expect(e.message).toMatch(/truncated/);
      expect(e.offset).toBe(cut);
    }
    const e = await expectCorrupt([image.subarray(0, p.dataOffset + 5000)], /^data slot 1 \+904$/);
    expect(e.offset).toBe(p.dataOffset + 5000);
  });

  it('detects appended bytes and concatenated images', async () => {
    await expectCorrupt([image, Buffer.from([0])], /^eof$/, image.length);
    await expectCorrupt(chunked(Buffer.concat([image, image]), 7919), /^eof$/, image.length);
    const other = await collect(makeFixture({ seed: 12, slots: 3 }).producer.stream());
    await expectCorrupt([Buffer.concat([image, other])], /^eof$/, image.length);
  });

  it('detects zeroed ranges, random bytes and foreign data', async () => {
    const zeroed = (a: number, n: number): Buffer => { const b = Buffer.from(image); b.fill(0, a, a + n); return b; };
    await expectCorrupt([zeroed(0, 4096)], /^header\.magic$/);
    await expectCorrupt([zeroed(100, 50)], /^header/);
    await expectCorrupt([zeroed(p.lbnTableOffset, 64)], /^(lbnTable entry 1|tables)$/);
    await expectCorrupt([zeroed(p.dataOffset + 8192, 4096)], /^data group 0/);
    await expectCorrupt([zeroed(p.groupTableOffset, image.length - p.groupTableOffset)], /^trailer\.magic$/);
    const rnd = prng(7);
    await expectCorrupt([randomBytes(rnd, 10000)], /^header\.magic$/, 0);
    await expectCorrupt([randomBytes(rnd, 3)], /^header$/, 3);
    await expectCorrupt([Buffer.from('not an image at all, just text\n'.repeat(200))], /^header\.magic$/);
    await expectCorrupt([Buffer.alloc(0)], /^header$/, 0);
    // A valid-looking header followed by foreign bytes.
    await expectCorrupt([image.subarray(0, 4096), randomBytes(rnd, image.length - 4096)]);
  });

  it('refuses unknown versions and unknown incompatible features, accepts unknown compatible ones', async () => {
    await expectCorrupt([resealed((h) => h.writeUInt32BE(3, HEADER_FIELDS.version))], /^header\.version$/);
    // a v2 image relabelled v1 (header resealed): its trailer still says 2
    await expectCorrupt([resealed((h) => h.writeUInt32BE(1, HEADER_FIELDS.version))], /^trailer\.version$/);
    await expectCorrupt([resealed((h) => h.writeUInt32BE(0, HEADER_FIELDS.version))], /^header\.version$/);
    await expectCorrupt([resealed((h) => h.writeUInt32BE(1, HEADER_FIELDS.incompat))], /^header\.incompatFeatures$/);
    await expectCorrupt([resealed((h) => h.writeUInt32BE(0x80000000, HEADER_FIELDS.incompat))], /^header\.incompatFeatures$/);
    await expectCorrupt([resealed((h) => h.writeUInt32BE(8192, HEADER_FIELDS.headerLength))], /^header\.headerLength$/);
    await expectCorrupt([resealed((h) => h.writeUInt32BE(3, HEADER_FIELDS.kind))], /^header\.kind$/);
    await expectCorrupt([resealed((h) => h.writeUInt32BE(p.dataOffset + 1, HEADER_FIELDS.dataOffset + 4))], /^header\.dataOffset$/);
    const compat = await parseAll([resealed((h) => h.writeUInt32BE(0x5, HEADER_FIELDS.compat))]);
    expect(compat.error).toBeUndefined();
    expect(compat.events.at(-1)?.type).toBe('end');
  });

  it('emits no end() when the consumer would otherwise have seen every block', async () => {
    // Damage in the last group: all blocks are delivered (provisionally) but end never comes.
    const { events, error } = await parseAll([flipped(p.dataOffset + 299 * 4096)]);
    expect(events.filter((e) => e.type === 'block').length).toBe(300);
    expect(events.some((e) => e.type === 'end')).toBe(false);
    expect((error as ImageError).where).toMatch(/^data group 1/);
  });
});
