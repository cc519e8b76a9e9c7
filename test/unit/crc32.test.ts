// util/crc32.ts: the CRC-32 every image and every block checksum uses, and crc32OfPieces, which checks many
// sectors with one crc32 call (disk/sums.ts).
import { describe, expect, it } from 'vitest';
import { crc32 as zlibCrc32 } from 'node:zlib';
import { crc32, crc32Impl, crc32OfPieces, Crc32 } from '../../src/util/crc32.js';
import { prng, randomBytes } from './helpers.js';

describe('crc32', () => {
  it('is the standard CRC-32 and continues across calls', () => {
    expect(crc32('123456789')).toBe(0xcbf43926);
    expect(crc32(Buffer.alloc(0))).toBe(0);
    const b = randomBytes(prng(1), 10000);
    expect(crc32(b.subarray(3000), crc32(b.subarray(0, 3000)))).toBe(crc32(b));
    expect(new Crc32().update(b, 0, 5000).update(b, 5000).digest()).toBe(crc32(b));
  });

  it('the fast implementation loads where it is built for, and computes what zlib does', () => {
    if (process.platform === 'linux' && ['x64', 'arm64'].includes(process.arch)) expect(crc32Impl).toBe('node-rs');
    const rnd = prng(3);
    for (const n of [0, 1, 3, 100, 4096, 65536, 1 << 20]) {
      const b = randomBytes(rnd, n);
      const prev = Math.floor(rnd() * 2 ** 32);
      expect(crc32(b), `${n} bytes`).toBe(zlibCrc32(b) >>> 0);
      expect(crc32(b, prev), `${n} bytes after ${prev}`).toBe(zlibCrc32(b, prev) >>> 0);
    }
    expect(crc32('héllo wörld')).toBe(zlibCrc32('héllo wörld') >>> 0);
  });

  it('crc32OfPieces gives the CRC of the concatenation from the pieces\' CRCs', () => {
    const rnd = prng(2);
    for (const [size, n] of [[4096, 1], [4096, 2], [4096, 16], [4096, 256], [512, 7], [65536, 3]] as const) {
      const b = randomBytes(rnd, size * n);
      const crcs = Array.from({ length: n }, (_, i) => crc32(b.subarray(i * size, (i + 1) * size)));
      expect(crc32OfPieces(size, n, (i) => crcs[i]!), `${n} × ${size}`).toBe(crc32(b));
      // one changed piece changes the result (what a reader relies on to find damage)
      if (n > 1) {
        crcs[n - 2] = (crcs[n - 2]! ^ 0x10) >>> 0;
        expect(crc32OfPieces(size, n, (i) => crcs[i]!)).not.toBe(crc32(b));
      }
    }
  });
});
