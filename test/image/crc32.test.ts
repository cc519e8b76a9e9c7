// CRC-32 (IEEE) known vectors, chaining, and agreement with a bitwise reference.

import { describe, it, expect } from 'vitest';
import { Crc32, crc32 } from '../../src/image/index.js';
import { prng, randomBytes } from './helpers.js';

function reference(data: Uint8Array): number {
  let c = 0xffffffff;
  for (const byte of data) {
    c ^= byte;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0xedb88320 : c >>> 1;
  }
  return ~c >>> 0;
}

describe('crc32', () => {
  it('matches known vectors', () => {
    expect(crc32('123456789')).toBe(0xcbf43926);
    expect(crc32(Buffer.alloc(0))).toBe(0);
    expect(crc32('The quick brown fox jumps over the lazy dog')).toBe(0x414fa339);
    expect(crc32(Buffer.alloc(32, 0))).toBe(0x190a55ad);
  });

  it('agrees with a bitwise reference and chains across arbitrary splits', () => {
    const rnd = prng(42);
    for (let t = 0; t < 200; t++) {
      const buf = randomBytes(rnd, Math.floor(rnd() * (t < 100 ? 300 : 5000))).subarray(t & 7);
      const want = reference(buf);
      expect(crc32(buf)).toBe(want);
      const cut = Math.floor(rnd() * (buf.length + 1));
      expect(crc32(buf.subarray(cut), crc32(buf.subarray(0, cut)))).toBe(want);
      const inc = new Crc32();
      for (let pos = 0; pos < buf.length;) {
        const n = 1 + Math.floor(rnd() * 20);
        inc.update(buf.subarray(pos, pos + n));
        pos += n;
      }
      expect(inc.digest()).toBe(want);
    }
  });
});
