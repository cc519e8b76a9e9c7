// CRC-32 (IEEE 802.3, the zlib/gzip/PNG checksum; reflected polynomial 0xEDB88320) over image regions and
// block sectors (disk/sums.ts). Computed by @node-rs/crc32 (crc32fast with carry-less multiply, prebuilt for
// every platform Node supports): ~14 GB/s per core here against ~4.5 for node's zlib.crc32, the same
// values, so verifying what a reader reads costs a third as much (README, *Block checksums*). Where its
// binary does not load, node's zlib.crc32 computes the same. zlib.crc32 made backup and restore streams 3x
// faster than the table-driven CRC-32 in JavaScript that format drafts used (see FORMAT.md, changelog).
// Invariants: crc32(b, crc32(a)) === crc32(a ++ b); crc32(empty) === 0; crc32("123456789") === 0xCBF43926.
import { createRequire } from 'node:module';
import { crc32 as zcrc32 } from 'node:zlib';

type Crc = (data: Uint8Array | string, prev: number) => number;

function loadFast(): Crc | null {
  if (process.env.VDISKFS_CRC === 'zlib') return null; // to compare the two
  try {
    const f = (createRequire(import.meta.url)('@node-rs/crc32') as { crc32: (d: Uint8Array | string, init?: number) => number }).crc32;
    return f(Buffer.from('123456789'), 0) === 0xcbf43926 ? (f as Crc) : null;
  } catch {
    return null;
  }
}

const fast = loadFast();
/** Which implementation computes crc32() in this process. */
export const crc32Impl: 'node-rs' | 'zlib' = fast ? 'node-rs' : 'zlib';
const impl: Crc = fast ?? ((d, prev) => zcrc32(d, prev) >>> 0);

export function crc32(data: Uint8Array | string, prev = 0): number {
  return data.length === 0 ? prev >>> 0 : impl(data, prev);
}

/** Incremental CRC-32: update() any number of times, then digest() (non-destructive). */
export class Crc32 {
  private state = 0;

  update(data: Uint8Array, start = 0, end = data.length): this {
    const view = start === 0 && end === data.length ? data : data.subarray(start, end);
    this.state = crc32(view, this.state);
    return this;
  }

  digest(): number {
    return this.state;
  }

  reset(): void {
    this.state = 0;
  }
}

/** The CRC-32 of each consecutive piece of `pieceBytes` bytes of data (the last may be shorter). */
export function crc32Each(data: Uint8Array, pieceBytes: number): Uint32Array {
  const out = new Uint32Array(Math.ceil(data.length / pieceBytes));
  for (let i = 0; i < out.length; i++) out[i] = crc32(data.subarray(i * pieceBytes, (i + 1) * pieceBytes));
  return out;
}

/**
 * The CRC-32 of `n` consecutive pieces of `pieceBytes` bytes each, from the pieces' own CRC-32s (`crcOf(i)`):
 * zlib's crc32_combine with the length fixed. crc(A ++ B) = L(crc(A)) ^ crc(B), where L (append
 * pieceBytes bytes) is linear over GF(2) and depends only on the length: L(v) = crc32(Z, v) ^ crc32(Z) for
 * Z = pieceBytes zeros. L is kept as four byte-indexed tables, so a piece costs four lookups. Lets a reader
 * check many sectors with one crc32 call over all of them (disk/sums.ts): per-call overhead was a quarter
 * of the checksums' cost for 4 KiB sectors.
 */
export function crc32OfPieces(pieceBytes: number, n: number, crcOf: (i: number) => number): number {
  const t = shiftTables(pieceBytes);
  let acc = 0;
  for (let i = 0; i < n; i++) acc = (i === 0 ? 0 : t[acc & 0xff]! ^ t[256 + ((acc >>> 8) & 0xff)]! ^ t[512 + ((acc >>> 16) & 0xff)]! ^ t[768 + (acc >>> 24)]!) ^ crcOf(i);
  return acc >>> 0;
}

const shifts = new Map<number, Uint32Array>();

function shiftTables(pieceBytes: number): Uint32Array {
  let t = shifts.get(pieceBytes);
  if (t) return t;
  const zeros = Buffer.alloc(pieceBytes);
  const z0 = crc32(zeros);
  const basis = Array.from({ length: 32 }, (_, bit) => (crc32(zeros, 2 ** bit) ^ z0) >>> 0);
  t = new Uint32Array(1024);
  for (let j = 0; j < 4; j++) {
    for (let b = 0; b < 256; b++) {
      let v = 0;
      for (let k = 0; k < 8; k++) if (b & (1 << k)) v ^= basis[8 * j + k]!;
      t[256 * j + b] = v >>> 0;
    }
  }
  shifts.set(pieceBytes, t);
  return t;
}
