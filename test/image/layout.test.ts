// Plan sizes, locate() and input validation of planImage.

import { describe, it, expect } from 'vitest';
import { HEADER_LENGTH, ImageError, TRAILER_RECORD_LENGTH, locate, describeOffset, planImage,
  type ImagePlanInput } from '../../src/image/index.js';

const base = (o: Partial<ImagePlanInput> = {}): ImagePlanInput => ({
  kind: 'full', virtualSize: 1 << 30, blockSize: 4096, dataLbns: [], sourcePbns: [], zeroLbns: [],
  sourceAllocated: 0, diskName: 'd', snapName: 's', snapId: 'sid', snapCreated: 0, ...o,
});

function expectInvalid(o: Partial<ImagePlanInput>, where: RegExp): void {
  try {
    planImage(base(o));
  } catch (e) {
    expect(e).toBeInstanceOf(ImageError);
    expect((e as ImageError).code).toBe('INVALID');
    expect((e as ImageError).where).toMatch(where);
    return;
  }
  throw new Error('expected planImage to throw');
}

describe('planImage', () => {
  it('size = header + tables (aligned) + slots*blockSize + group table + trailer record', () => {
    const slots = 1000;
    const p = planImage(base({ kind: 'delta', baseSnapId: 'b', dataLbns: Array.from({ length: slots }, (_, i) => 2 * i),
      sourcePbns: Array.from({ length: slots }, (_, i) => i), zeroLbns: [1, 3, 5] }));
    const tables = 16 * slots + 8 * 3;
    const tablesAligned = Math.ceil(tables / 4096) * 4096;
    expect(p.dataOffset).toBe(HEADER_LENGTH + tablesAligned);
    expect(p.dataOffset % 4096).toBe(0);
    expect(p.groupBlocks).toBe(256);
    expect(p.groupCount).toBe(4);
    expect(p.totalLength).toBe(HEADER_LENGTH + tablesAligned + slots * 4096 + 4 * 4 + TRAILER_RECORD_LENGTH);
  });

  it('is independent of the virtual size: 16 TiB with 3 blocks is small', () => {
    const p = planImage(base({ virtualSize: 16 * 2 ** 40, dataLbns: [0, 2 ** 31, 2 ** 32 - 1], sourcePbns: [5, 6, 7] }));
    expect(p.totalLength).toBe(4096 + 4096 + 3 * 4096 + 4 + 64);
    expect(p.lbns.length).toBe(3);
  });

  it('empty image has no data and no groups', () => {
    const p = planImage(base());
    expect(p.slotCount).toBe(0);
    expect(p.groupCount).toBe(0);
    expect(p.totalLength).toBe(4096 + 64);
  });

  it('uses one group per ~1 MiB for any block size', () => {
    for (const bs of [4096, 65536, 1 << 20]) expect(planImage(base({ blockSize: bs })).groupBlocks * bs).toBe(1 << 20);
  });

  it('rejects bad input with INVALID', () => {
    expectInvalid({ blockSize: 3000 }, /blockSize/);
    expectInvalid({ blockSize: 2048 }, /blockSize/);
    expectInvalid({ blockSize: 2 << 20 }, /blockSize/);
    expectInvalid({ virtualSize: 2 ** 53 }, /virtualSize/);
    expectInvalid({ virtualSize: -1 }, /virtualSize/);
    expectInvalid({ dataLbns: [2, 1], sourcePbns: [0, 0] }, /dataLbns\[1\]/);
    expectInvalid({ dataLbns: [1, 1], sourcePbns: [0, 0] }, /dataLbns\[1\]/);
    expectInvalid({ dataLbns: [1.5], sourcePbns: [0] }, /dataLbns\[0\]/);
    expectInvalid({ virtualSize: 8192, dataLbns: [2], sourcePbns: [0] }, /dataLbns\[0\]/);
    expectInvalid({ dataLbns: [1], sourcePbns: [] }, /sourcePbns/);
    expectInvalid({ dataLbns: [1], sourcePbns: [-1] }, /sourcePbns\[0\]/);
    expectInvalid({ zeroLbns: [1] }, /zeroLbns/);
    expectInvalid({ kind: 'delta' }, /baseSnapId/);
    expectInvalid({ baseSnapId: 'x' }, /baseSnapId/);
    expectInvalid({ kind: 'delta', baseSnapId: 'b', dataLbns: [4], sourcePbns: [0], zeroLbns: [4] }, /zeroLbns\[0\]/);
    expectInvalid({ kind: 'delta', baseSnapId: 'b', zeroLbns: [5, 4] }, /zeroLbns\[1\]/);
    expectInvalid({ diskName: 'x'.repeat(511) }, /diskName/);
    expectInvalid({ snapId: '' }, /snapId/);
    expectInvalid({ snapCreated: -5 }, /snapCreated/);
    expectInvalid({ kind: 'other' as 'full' }, /kind/);
  });

  it('copies its input so later mutation cannot change the image', () => {
    const lbns = [1, 2, 3];
    const p = planImage(base({ dataLbns: lbns, sourcePbns: [0, 0, 0] }));
    lbns[0] = 99;
    expect(p.lbns[0]).toBe(1);
  });
});

describe('locate', () => {
  const p = planImage(base({ kind: 'delta', baseSnapId: 'b', dataLbns: [10, 20, 30], sourcePbns: [1, 2, 3], zeroLbns: [5, 6] }));
  it('maps offsets to regions, entries and offsets within', () => {
    expect(locate(p, 0)).toMatchObject({ region: 'header', within: 0 });
    expect(locate(p, 4095)).toMatchObject({ region: 'header', within: 4095 });
    expect(locate(p, 4096 + 9)).toMatchObject({ region: 'lbnTable', index: 1, within: 1 });
    expect(locate(p, p.pbnTableOffset + 16)).toMatchObject({ region: 'pbnTable', index: 2, within: 0 });
    expect(locate(p, p.zeroTableOffset + 15)).toMatchObject({ region: 'zeroTable', index: 1, within: 7 });
    expect(locate(p, p.tablesEnd)).toMatchObject({ region: 'tablePadding', within: 0 });
    expect(locate(p, p.dataOffset + 4096 * 2 + 5)).toMatchObject({ region: 'data', index: 2, within: 5 });
    expect(locate(p, p.groupTableOffset + 3)).toMatchObject({ region: 'groupTable', index: 0, within: 3 });
    expect(locate(p, p.trailerOffset + 63)).toMatchObject({ region: 'trailer', within: 63 });
    expect(locate(p, p.totalLength)).toMatchObject({ region: 'eof', within: 0 });
    expect(describeOffset(p, p.dataOffset + 4097)).toBe('data slot 1 +1');
  });
  it('regions tile the image without gaps', () => {
    let pos = 0;
    while (pos < p.totalLength) {
      const loc = locate(p, pos);
      expect(loc.regionStart).toBe(pos);
      expect(loc.regionEnd).toBeGreaterThan(pos);
      pos = loc.regionEnd;
    }
    expect(pos).toBe(p.totalLength);
  });
});
