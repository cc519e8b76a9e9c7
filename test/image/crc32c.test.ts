// CRC-32C known vectors (RFC 3720 B.4), chaining, and agreement with a bitwise reference.

import { describe, it, expect } from 'vitest';
import { Crc32c, crc32c } from '../../src/image/index.js';
import { prng, randomBytes } from './helpers.js';

function reference(data: Uint8Array): number {
  let c = 0xffffffff;
  for (const byte of data) {
    c ^= byte;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
  }
  return ~c >>> 0;
}

describe('crc32c', () => {
  it('matches known vectors', () => {
    expect(crc32c('123456789')).toBe(0xe3069283);
    expect(crc32c(Buffer.alloc(0))).toBe(0);
    expect(crc32c(Buffer.alloc(32, 0))).toBe(0x8a9136aa);
    expect(crc32c(Buffer.alloc(32, 0xff))).toBe(0x62a8ab43);
    expect(crc32c(Buffer.from(Array.from({ length: 32 }, (_, i) => i)))).toBe(0x46dd794e);
    expect(crc32c(Buffer.from(Array.from({ length: 32 }, (_, i) => 31 - i)))).toBe(0x113fdb5c);
  });

  it('agrees with a bitwise reference and chains across arbitrary splits', () => {
    const rnd = prng(42);
    for (let t = 0; t < 200; t++) {
      const buf = randomBytes(rnd, Math.floor(rnd() * (t < 100 ? 300 : 5000))).subarray(t & 7);
      const want = reference(buf);
      expect(crc32c(buf)).toBe(want);
      const cut = Math.floor(rnd() * (buf.length + 1));
      expect(crc32c(buf.subarray(cut), crc32c(buf.subarray(0, cut)))).toBe(want);
      const inc = new Crc32c();
      for (let pos = 0; pos < buf.length;) {
        const n = 1 + Math.floor(rnd() * 20);
        inc.update(buf.subarray(pos, pos + n));
        pos += n;
      }
      expect(inc.digest()).toBe(want);
    }
  });

  it('is fast on large buffers', () => {
    const buf = randomBytes(prng(1), 1 << 20);
    const big = Buffer.concat(Array.from({ length: 32 }, () => buf));
    const t0 = performance.now();
    crc32c(big);
    const ms = performance.now() - t0;
    // 32 MiB; slicing-by-8 runs at several hundred MB/s. Generous bound to stay robust on slow CI.
    expect(ms).toBeLessThan(2000);
  });
});
