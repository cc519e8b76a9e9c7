/**
 * Helpers for the backup/restore integration tests (backup.test.ts, backup-damage.test.ts): the image
 * size formula and header fields of src/image/FORMAT.md (re-derived here independently of src/), byte
 * comparisons with cmp, offline CLI queries and damaged-image variants. Everything is asynchronous.
 */
import { open, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { expect } from 'vitest';
import { q, randomBuffer, sh, vdiskfs, writeAt, type DiskStatus, type RunResult, type StoreStatus } from './helpers.js';

export const KiB = 1024;
export const MiB = 1024 * 1024;

const roundUp = (n: number, a: number): number => Math.ceil(n / a) * a;

/** FORMAT.md: 4096 + roundUp(16*slots + 8*zeros, 4096) + slots*blockSize + 4*groups + 64. */
export function imageSize(slots: number, zeros: number, blockSize: number): number {
  const groupBlocks = Math.max(1, Math.floor(MiB / blockSize));
  const groups = Math.ceil(slots / groupBlocks);
  return 4096 + roundUp(16 * slots + 8 * zeros, 4096) + slots * blockSize + 4 * groups + 64;
}

export interface ImageFields {
  version: number;
  magic: string;
  kind: number;
  blockSize: number;
  virtualSize: number;
  slotCount: number;
  zeroCount: number;
  groupBlocks: number;
  groupCount: number;
  dataOffset: number;
  groupTableOffset: number;
  trailerOffset: number;
  totalLength: number;
  snapId: string;
  baseSnapId: string;
}

const u64 = (b: Buffer, o: number): number => Number(b.readBigUInt64BE(o));
const str = (b: Buffer, o: number): string => b.subarray(o + 2, o + 2 + b.readUInt16BE(o)).toString('utf8');

/** Header fields (big-endian, FORMAT.md offsets). */
export function parseHeader(img: Buffer): ImageFields {
  return {
    magic: img.subarray(0, 8).toString('latin1'),
    version: img.readUInt32BE(8),
    kind: img.readUInt32BE(24),
    blockSize: img.readUInt32BE(28),
    virtualSize: u64(img, 32),
    slotCount: u64(img, 40),
    zeroCount: u64(img, 48),
    groupBlocks: img.readUInt32BE(56),
    groupCount: img.readUInt32BE(60),
    dataOffset: u64(img, 88),
    groupTableOffset: u64(img, 96),
    trailerOffset: u64(img, 104),
    totalLength: u64(img, 112),
    snapId: str(img, 1536),
    baseSnapId: str(img, 2048),
  };
}

/** The block correspondence table: `lbns` the image's data lbns ascending, `slotLbns` slot i -> lbn; the zero list. */
export function imageTables(img: Buffer): { lbns: number[]; zeros: number[]; slotLbns?: number[] } {
  const h = parseHeader(img);
  const slotLbns: number[] = [];
  for (let i = 0; i < h.slotCount; i++) slotLbns.push(u64(img, 4096 + 8 * i));
  const zeros: number[] = [];
  const zt = 4096 + 16 * h.slotCount;
  for (let i = 0; i < h.zeroCount; i++) zeros.push(u64(img, zt + 8 * i));
  const lbns = [...slotLbns].sort((a, b) => a - b);
  // version 2 images list slots in the source's physical order (FORMAT.md): only the set is compared by default
  const out: { lbns: number[]; zeros: number[]; slotLbns?: number[] } = { lbns, zeros };
  Object.defineProperty(out, 'slotLbns', { value: slotLbns, enumerable: false });
  return out;
}

/** `cmp -s a b` (optionally only the first n bytes): true when identical. Output of cmp kept for messages. */
export async function cmp(a: string, b: string, n?: number): Promise<RunResult & { same: boolean }> {
  const r = await sh(`cmp ${n !== undefined ? `-n ${n} ` : ''}${q(a)} ${q(b)}`);
  return { ...r, same: r.code === 0 };
}

/** Assert two files (or their first n bytes) are byte-identical, with cmp's output as the message. */
export async function expectSameBytes(a: string, b: string, n?: number): Promise<void> {
  const r = await cmp(a, b, n);
  expect(r.code, `cmp ${a} ${b}: ${r.stdout}${r.stderr}`).toBe(0);
}

/** `vdiskfs list --json --store DIR` (offline, or through the mount's status when mounted). */
export async function listJson(store: string): Promise<DiskStatus[]> {
  const r = await vdiskfs(['list', '--json', '--store', store]);
  if (r.code !== 0) throw new Error(`vdiskfs list failed (${r.code}): ${r.stderr}`);
  return JSON.parse(r.stdout) as DiskStatus[];
}

/** `vdiskfs status --json --store DIR`. */
export async function statusJson(store: string): Promise<StoreStatus> {
  const r = await vdiskfs(['status', '--json', '--store', store]);
  if (r.code !== 0) throw new Error(`vdiskfs status failed (${r.code}): ${r.stderr}`);
  return JSON.parse(r.stdout) as StoreStatus;
}

/** One write into a disk: deterministic random bytes (never an all-zero block) at a byte offset. */
export interface Write {
  offset: number;
  length: number;
  seed: number;
}

/** Apply writes through the mount (pwrite from this process, asynchronously). */
export async function applyWrites(disk: string, writes: Write[]): Promise<void> {
  for (const w of writes) await writeAt(disk, w.offset, randomBuffer(w.seed, w.length));
}

/** The logical blocks a list of writes touches (random data: every touched block is non-zero). */
export function touchedBlocks(writes: { offset: number; length: number }[], blockSize: number): Set<number> {
  const s = new Set<number>();
  for (const w of writes) {
    if (w.length === 0) continue;
    for (let b = Math.floor(w.offset / blockSize); b <= Math.floor((w.offset + w.length - 1) / blockSize); b++) s.add(b);
  }
  return s;
}

/** Read a whole (small) file: the mount's image files are read with ordinary reads. */
export const readAll = (path: string): Promise<Buffer> => readFile(path);

/** Read a file with `dd bs=...` to stdout and return the bytes. */
export async function ddToFile(src: string, dst: string, bs = '1M'): Promise<RunResult> {
  return sh(`dd if=${q(src)} of=${q(dst)} bs=${bs} status=none`);
}

/** Read a list of random ranges of `path` and compare them with the same ranges of `expected`. */
export async function expectRandomReads(path: string, expected: Buffer, count: number, seed: number): Promise<void> {
  const rnd = randomBuffer(seed, count * 8);
  const fh = await open(path, 'r');
  try {
    for (let i = 0; i < count; i++) {
      const off = rnd.readUInt32LE(i * 8) % expected.length;
      const len = 1 + (rnd.readUInt32LE(i * 8 + 4) % Math.min(300_000, expected.length - off));
      const buf = Buffer.alloc(len);
      const { bytesRead } = await fh.read(buf, 0, len, off);
      expect(bytesRead, `read ${len} at ${off}`).toBe(len);
      expect(buf.equals(expected.subarray(off, off + len)), `bytes ${off}..${off + len}`).toBe(true);
    }
  } finally {
    await fh.close();
  }
}

/** Whole-file sha256 through readRange-sized chunks (size from stat). */
export async function fileSha(path: string): Promise<string> {
  const { createHash } = await import('node:crypto');
  const h = createHash('sha256');
  const fh = await open(path, 'r');
  try {
    const chunk = Buffer.alloc(4 * MiB);
    let pos = 0;
    for (;;) {
      const { bytesRead } = await fh.read(chunk, 0, chunk.length, pos);
      if (bytesRead === 0) break;
      h.update(chunk.subarray(0, bytesRead));
      pos += bytesRead;
    }
  } finally {
    await fh.close();
  }
  return h.digest('hex');
}

// ---------------------------------------------------------------------------------------------------------
// Damaged variants of a good image

export interface Variant {
  name: string;
  data: Buffer;
  /** What verify's message must say: the region and the byte offset of the damage ("@N" in the message). */
  where: RegExp;
}

const flip = (img: Buffer, at: number, mask = 0x01): Buffer => {
  const b = Buffer.from(img);
  b[at] = b[at]! ^ mask;
  return b;
};

/**
 * Damaged variants of one good (full) image: flipped bytes in every region, truncations, two images
 * concatenated, random bytes, zeroed ranges. The image must have at least 3 slots and table padding.
 */
export function damagedVariants(good: Buffer): Variant[] {
  const h = parseHeader(good);
  if (h.slotCount < 3) throw new Error('damagedVariants needs an image with at least 3 data blocks');
  if (4096 + 16 * h.slotCount >= h.dataOffset) throw new Error('damagedVariants needs table padding');
  const bs = h.blockSize;
  const d = h.dataOffset;
  const mid = Math.floor(h.slotCount / 2);
  const last = h.slotCount - 1;
  const size = good.length;
  const group = (slot: number): number => Math.floor(slot / h.groupBlocks);
  const groupAt = (slot: number): RegExp => new RegExp(`data group ${group(slot)} .*@${d + group(slot) * h.groupBlocks * bs}: .*checksum`);
  const v: Variant[] = [
    { name: 'flip header magic (byte 3)', data: flip(good, 3), where: /magic @0:/ },
    { name: 'flip header slotCount (byte 47)', data: flip(good, 47), where: /header @0: .*checksum/ },
    { name: 'flip header reserved (byte 200)', data: flip(good, 200), where: /header @0: .*checksum/ },
    // the first slot's lbn changes: the tables checksum (version 2 lists slots in physical order, so no
    // ordering check can see it first)
    { name: 'flip lbn table (first entry, low byte)', data: flip(good, 4096 + 7), where: /tables @4096: .*checksum|lbnTable entry/ },
    { name: 'flip lbn table (last entry, high byte)', data: flip(good, 4096 + 8 * last, 0x80), where: new RegExp(`lbnTable entry ${last} @${4096 + 8 * last}:`) },
    { name: 'flip source allocation record', data: flip(good, 4096 + 8 * h.slotCount + 7), where: /tables @4096: .*checksum/ },
    { name: 'flip table padding', data: flip(good, d - 1), where: /tables @4096: .*checksum|tablePadding/ },
    { name: 'flip data: first block, first byte', data: flip(good, d), where: groupAt(0) },
    { name: 'flip data: middle block', data: flip(good, d + mid * bs + Math.floor(bs / 2) + 13), where: groupAt(mid) },
    { name: 'flip data: last block, last byte', data: flip(good, d + (last + 1) * bs - 1), where: groupAt(last) },
    { name: 'flip group checksum table', data: flip(good, h.groupTableOffset + 2), where: new RegExp(`groupTable @${h.groupTableOffset}: .*checksum`) },
    { name: 'flip trailer magic', data: flip(good, h.trailerOffset + 1), where: new RegExp(`trailer.* @${h.trailerOffset}: .*magic`) },
    { name: 'flip trailerCrc (last byte)', data: flip(good, size - 1), where: new RegExp(`trailer @${h.trailerOffset}: .*checksum`) },
  ];
  for (const [label, at, region] of [
    ['0', 0, 'header'],
    ['1', 1, 'header'],
    ['100', 100, 'header'],
    ['4095', 4095, 'header'],
    ['4096', 4096, 'lbnTable'],
    ['data start', d, 'data'],
    ['middle of data', d + mid * bs + 777, 'data'],
    ['trailer record', h.trailerOffset, 'trailer'],
    ['size-1', size - 1, 'trailer'],
  ] as const) {
    v.push({ name: `truncated at ${label} (${at} bytes)`, data: good.subarray(0, at), where: new RegExp(`${region}.* @${at}: truncated: input ends at byte ${at}$`, 'm') });
  }
  const after = new RegExp(`eof @${size}: .*after the end`);
  v.push({ name: 'two images concatenated', data: Buffer.concat([good, good]), where: after });
  v.push({ name: 'one extra byte appended', data: Buffer.concat([good, Buffer.from([0])]), where: after });
  v.push({ name: 'random bytes (same size)', data: randomBuffer(4242, size), where: /magic @0:/ });
  const z = Buffer.from(good);
  z.fill(0, d + bs + 8192, d + bs + 8192 + 4096);
  v.push({ name: 'zeroed 4K range in the data (slot 1)', data: z, where: groupAt(1) });
  const zh = Buffer.from(good);
  zh.fill(0, 0, 4096);
  v.push({ name: 'zeroed header', data: zh, where: /magic @0:/ });
  return v;
}

/** Scratch path for variant i. */
export const variantPath = (dir: string, i: number): string => join(dir, `variant-${String(i).padStart(2, '0')}.img`);
