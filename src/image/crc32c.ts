// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), slicing-by-16 over 32-bit words
// (little-endian hosts; a byte-wise slicing-by-8 path otherwise and for short/unaligned edges).
// Invariants: crc32c(data, prev) chains like zlib's crc32: crc32c(b, crc32c(a)) === crc32c(a ++ b);
// crc32c(empty) === 0; crc32c("123456789") === 0xE3069283. Results are unsigned 32-bit numbers.

import { endianness } from 'node:os';

const POLY = 0x82f63b78;
const LITTLE_ENDIAN = endianness() === 'LE';

/** T[k * 256 + b]: slicing-by-16 lookup tables (16 x 256 entries, signed int32 for fast xor). */
const T = (() => {
  const t = new Int32Array(16 * 256);
  for (let i = 0; i < 256; i++) {
    let c = i;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ POLY : c >>> 1;
    t[i] = c;
  }
  for (let i = 0; i < 256; i++) {
    for (let k = 1; k < 16; k++) {
      const prev = t[(k - 1) * 256 + i]!;
      t[k * 256 + i] = t[prev & 0xff]! ^ (prev >>> 8);
    }
  }
  return t;
})();

/**
 * Update a raw (pre-inverted) CRC state with `data[start, end)`. Use crc32c() unless you keep
 * the raw state yourself; the raw state starts at 0xFFFFFFFF and the result is `~state >>> 0`.
 */
export function crc32cRaw(state: number, data: Uint8Array, start = 0, end = data.length): number {
  const t = T;
  let c = state | 0;
  let i = start;
  if (LITTLE_ENDIAN && end - i >= 64) {
    while ((data.byteOffset + i) & 3) c = t[(c ^ data[i++]!) & 0xff]! ^ (c >>> 8);
    const words = (end - i) >>> 4 << 2;
    const w = new Int32Array(data.buffer, data.byteOffset + i, words);
    for (let k = 0; k < words; k += 4) {
      const a = c ^ w[k]!, b = w[k + 1]!, d = w[k + 2]!, e = w[k + 3]!;
      c = t[3840 + (a & 0xff)]! ^ t[3584 + ((a >>> 8) & 0xff)]! ^ t[3328 + ((a >>> 16) & 0xff)]! ^ t[3072 + (a >>> 24)]! ^
        t[2816 + (b & 0xff)]! ^ t[2560 + ((b >>> 8) & 0xff)]! ^ t[2304 + ((b >>> 16) & 0xff)]! ^ t[2048 + (b >>> 24)]! ^
        t[1792 + (d & 0xff)]! ^ t[1536 + ((d >>> 8) & 0xff)]! ^ t[1280 + ((d >>> 16) & 0xff)]! ^ t[1024 + (d >>> 24)]! ^
        t[768 + (e & 0xff)]! ^ t[512 + ((e >>> 8) & 0xff)]! ^ t[256 + ((e >>> 16) & 0xff)]! ^ t[e >>> 24]!;
    }
    i += words * 4;
  }
  const stop8 = end - ((end - i) & 7);
  while (i < stop8) {
    const a = c ^ (data[i]! | (data[i + 1]! << 8) | (data[i + 2]! << 16) | (data[i + 3]! << 24));
    c = t[1792 + (a & 0xff)]! ^ t[1536 + ((a >>> 8) & 0xff)]! ^ t[1280 + ((a >>> 16) & 0xff)]! ^
      t[1024 + (a >>> 24)]! ^ t[768 + data[i + 4]!]! ^ t[512 + data[i + 5]!]! ^ t[256 + data[i + 6]!]! ^ t[data[i + 7]!]!;
    i += 8;
  }
  while (i < end) c = t[(c ^ data[i++]!) & 0xff]! ^ (c >>> 8);
  return c >>> 0;
}

/** CRC-32C of `data`, optionally continuing from a previous crc32c() result `prev`. */
export function crc32c(data: Uint8Array | string, prev = 0): number {
  const bytes = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
  return ~crc32cRaw(~prev >>> 0, bytes) >>> 0;
}

/** Incremental CRC-32C: update() any number of times, then digest() (non-destructive). */
export class Crc32c {
  private state = 0xffffffff;
  update(data: Uint8Array, start = 0, end = data.length): this {
    this.state = crc32cRaw(this.state, data, start, end);
    return this;
  }
  digest(): number {
    return ~this.state >>> 0;
  }
  reset(): void {
    this.state = 0xffffffff;
  }
}
