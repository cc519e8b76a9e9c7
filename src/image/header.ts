// Encoding and checked decoding of the fixed header (4096 bytes) and trailer record (64 bytes).
// All integers big-endian. decodeHeader verifies, in this order: magic, version, header length,
// header crc, incompatible features, then every field against the canonical layout; it throws
// ImageError CORRUPT naming the field. Field offsets here must match FORMAT.md exactly.

import { crc32 } from '../util/crc32.js';
import { corrupt } from './imageError.js';
import {
  HEADER_LENGTH, MAX_BLOCK_SIZE, MAX_STRING_BYTES, MIN_BLOCK_SIZE, TRAILER_RECORD_LENGTH,
  computeLayout, isPow2, type ImageIdentity, type ImageLayout, type ImagePlan,
} from './layout.js';

export const MAGIC = Buffer.from('VDSKIMG\0', 'latin1');
export const TRAILER_MAGIC = Buffer.from('VDSKEND\0', 'latin1');
/** The version this implementation writes: 2 (slots in source physical order; FORMAT.md, changelog). */
export const VERSION = 2;
/** Versions this implementation reads: 1 (slots in ascending lbn order) and 2. */
export const READ_VERSIONS: readonly number[] = [1, 2];
/** Feature bits known to this implementation (none yet in versions 1 and 2). */
export const KNOWN_INCOMPAT = 0;
export const KNOWN_COMPAT = 0;
/** Reader implementation limit on table entries (bounds memory; not a format limit). */
export const MAX_TABLE_ENTRIES = 2 ** 28;

/** Header field offsets (bytes from start of image). */
export const H = {
  magic: 0, version: 8, headerLength: 12, incompat: 16, compat: 20, kind: 24, blockSize: 28,
  virtualSize: 32, slotCount: 40, zeroCount: 48, groupBlocks: 56, groupCount: 60,
  lbnTableOffset: 64, pbnTableOffset: 72, zeroTableOffset: 80, dataOffset: 88, groupTableOffset: 96,
  trailerOffset: 104, totalLength: 112, sourceAllocated: 120, snapCreated: 128, tablesCrc: 136,
  headerCrc: 140, diskName: 512, snapName: 1024, snapId: 1536, baseSnapId: 2048, baseSnapName: 2560,
} as const;
/** Trailer record field offsets (bytes from trailerOffset). */
export const T = {
  magic: 0, version: 8, blockSize: 12, totalLength: 16, slotCount: 24, zeroCount: 32, headerCrc: 40,
  tablesCrc: 44, groupTableCrc: 48, snapIdCrc: 52, reserved: 56, trailerCrc: 60,
} as const;

export interface ImageHeader extends ImageIdentity, ImageLayout {
  version: number; incompatFeatures: number; compatFeatures: number;
  kind: 'full' | 'delta'; virtualSize: number; blockCount: number; sourceAllocated: number;
  tablesCrc: number; headerCrc: number;
}

export interface TrailerRecord {
  version: number; blockSize: number; totalLength: number; slotCount: number; zeroCount: number;
  headerCrc: number; tablesCrc: number; groupTableCrc: number; snapIdCrc: number; trailerCrc: number;
}

export function writeU64(b: Buffer, off: number, v: number): void {
  b.writeUInt32BE(Math.floor(v / 0x100000000), off);
  b.writeUInt32BE(v >>> 0, off + 4);
}

/** Read a u64; returns -1 if it does not fit a safe integer. */
export function readU64(b: Buffer, off: number): number {
  const hi = b.readUInt32BE(off);
  return hi > 0x1fffff ? -1 : hi * 0x100000000 + b.readUInt32BE(off + 4);
}

function writeStr(b: Buffer, off: number, s: string | undefined): void {
  const n = b.write(s ?? '', off + 2, 'utf8');
  b.writeUInt16BE(n, off);
}

const utf8 = new TextDecoder('utf-8', { fatal: true });
function readStr(b: Buffer, off: number, name: string): string {
  const n = b.readUInt16BE(off);
  if (n > MAX_STRING_BYTES) throw corrupt(`header.${name}`, `string length ${n} > ${MAX_STRING_BYTES}`, off);
  try {
    return utf8.decode(b.subarray(off + 2, off + 2 + n));
  } catch {
    throw corrupt(`header.${name}`, 'invalid UTF-8', off);
  }
}

export function encodeHeader(p: ImagePlan, tablesCrc: number): Buffer {
  const b = Buffer.alloc(HEADER_LENGTH);
  MAGIC.copy(b, H.magic);
  b.writeUInt32BE(p.version, H.version);
  b.writeUInt32BE(HEADER_LENGTH, H.headerLength);
  b.writeUInt32BE(0, H.incompat);
  b.writeUInt32BE(0, H.compat);
  b.writeUInt32BE(p.kind === 'full' ? 1 : 2, H.kind);
  b.writeUInt32BE(p.blockSize, H.blockSize);
  for (const f of ['virtualSize', 'slotCount', 'zeroCount', 'lbnTableOffset', 'pbnTableOffset', 'zeroTableOffset',
    'dataOffset', 'groupTableOffset', 'trailerOffset', 'totalLength', 'sourceAllocated', 'snapCreated'] as const) {
    writeU64(b, H[f], p[f]);
  }
  b.writeUInt32BE(p.groupBlocks, H.groupBlocks);
  b.writeUInt32BE(p.groupCount, H.groupCount);
  b.writeUInt32BE(tablesCrc, H.tablesCrc);
  for (const f of ['diskName', 'snapName', 'snapId', 'baseSnapId', 'baseSnapName'] as const) writeStr(b, H[f], p[f]);
  b.writeUInt32BE(crc32(b), H.headerCrc);
  return b;
}

/** Header crc: crc32 over the header with the headerCrc field read as zero. */
export function headerCrcOf(b: Buffer): number {
  const saved = b.readUInt32BE(H.headerCrc);
  b.writeUInt32BE(0, H.headerCrc);
  const c = crc32(b);
  b.writeUInt32BE(saved, H.headerCrc);
  return c;
}

/** Check magic/version/length of the first HEADER_LENGTH bytes; returns the header length. */
export function checkHeaderPrefix(b: Buffer): number {
  if (!b.subarray(0, 8).equals(MAGIC)) throw corrupt('header.magic', 'not a vdiskfs image (bad magic)', 0);
  const version = b.readUInt32BE(H.version);
  if (!READ_VERSIONS.includes(version)) throw corrupt('header.version', `unsupported version ${version}`, H.version);
  const hl = b.readUInt32BE(H.headerLength);
  if (hl !== HEADER_LENGTH) throw corrupt('header.headerLength', `unsupported header length ${hl}`, H.headerLength);
  return hl;
}

/** Fully verify and decode a complete header buffer (headerLength bytes). */
export function decodeHeader(b: Buffer): ImageHeader {
  const headerLength = checkHeaderPrefix(b);
  const headerCrc = b.readUInt32BE(H.headerCrc);
  if (headerCrcOf(b) !== headerCrc) throw corrupt('header', 'header checksum mismatch', 0);
  const incompat = b.readUInt32BE(H.incompat);
  if (incompat & ~KNOWN_INCOMPAT) {
    throw corrupt('header.incompatFeatures', `unknown incompatible features 0x${(incompat >>> 0).toString(16)}`, H.incompat);
  }
  const u64 = (f: keyof typeof H): number => {
    const v = readU64(b, H[f]);
    if (v < 0) throw corrupt(`header.${f}`, 'value exceeds 2^53-1', H[f]);
    return v;
  };
  const kindCode = b.readUInt32BE(H.kind);
  if (kindCode !== 1 && kindCode !== 2) throw corrupt('header.kind', `unknown image kind ${kindCode}`, H.kind);
  const kind = kindCode === 1 ? 'full' : 'delta';
  const blockSize = b.readUInt32BE(H.blockSize);
  if (!isPow2(blockSize) || blockSize < MIN_BLOCK_SIZE || blockSize > MAX_BLOCK_SIZE) {
    throw corrupt('header.blockSize', `bad block size ${blockSize}`, H.blockSize);
  }
  const virtualSize = u64('virtualSize');
  const blockCount = Math.ceil(virtualSize / blockSize);
  const slotCount = u64('slotCount');
  const zeroCount = u64('zeroCount');
  if (slotCount + zeroCount > blockCount) {
    throw corrupt('header.slotCount', `slotCount+zeroCount exceeds ${blockCount} blocks`, H.slotCount);
  }
  if (slotCount + zeroCount > MAX_TABLE_ENTRIES) throw corrupt('header.slotCount', 'tables exceed reader limit', H.slotCount);
  if (kind === 'full' && zeroCount !== 0) throw corrupt('header.zeroCount', 'full image with zero list', H.zeroCount);
  const groupBlocks = b.readUInt32BE(H.groupBlocks);
  if (groupBlocks < 1 || groupBlocks > 1 << 20) throw corrupt('header.groupBlocks', `bad ${groupBlocks}`, H.groupBlocks);
  const layout = computeLayout({ headerLength, blockSize, slotCount, zeroCount, groupBlocks });
  if (b.readUInt32BE(H.groupCount) !== layout.groupCount) {
    throw corrupt('header.groupCount', 'does not match slotCount/groupBlocks', H.groupCount);
  }
  for (const f of ['lbnTableOffset', 'pbnTableOffset', 'zeroTableOffset', 'dataOffset', 'groupTableOffset',
    'trailerOffset', 'totalLength'] as const) {
    if (u64(f) !== layout[f]) throw corrupt(`header.${f}`, `expected ${layout[f]}`, H[f]);
  }
  const h: ImageHeader = {
    ...layout, version: b.readUInt32BE(H.version), incompatFeatures: incompat, compatFeatures: b.readUInt32BE(H.compat), kind,
    virtualSize, blockCount, sourceAllocated: u64('sourceAllocated'), snapCreated: u64('snapCreated'),
    tablesCrc: b.readUInt32BE(H.tablesCrc), headerCrc,
    diskName: readStr(b, H.diskName, 'diskName'), snapName: readStr(b, H.snapName, 'snapName'),
    snapId: readStr(b, H.snapId, 'snapId'),
  };
  const baseSnapId = readStr(b, H.baseSnapId, 'baseSnapId');
  const baseSnapName = readStr(b, H.baseSnapName, 'baseSnapName');
  if (kind === 'full' && (baseSnapId || baseSnapName)) throw corrupt('header.baseSnapId', 'full image with a base', H.baseSnapId);
  if (kind === 'delta' && !baseSnapId) throw corrupt('header.baseSnapId', 'delta image without a base', H.baseSnapId);
  if (baseSnapId) h.baseSnapId = baseSnapId;
  if (baseSnapName) h.baseSnapName = baseSnapName;
  return h;
}

export function encodeTrailer(t: Omit<TrailerRecord, 'trailerCrc'>): Buffer {
  const b = Buffer.alloc(TRAILER_RECORD_LENGTH);
  TRAILER_MAGIC.copy(b, T.magic);
  b.writeUInt32BE(t.version, T.version);
  b.writeUInt32BE(t.blockSize, T.blockSize);
  writeU64(b, T.totalLength, t.totalLength);
  writeU64(b, T.slotCount, t.slotCount);
  writeU64(b, T.zeroCount, t.zeroCount);
  b.writeUInt32BE(t.headerCrc, T.headerCrc);
  b.writeUInt32BE(t.tablesCrc, T.tablesCrc);
  b.writeUInt32BE(t.groupTableCrc, T.groupTableCrc);
  b.writeUInt32BE(t.snapIdCrc, T.snapIdCrc);
  b.writeUInt32BE(crc32(b.subarray(0, T.trailerCrc)), T.trailerCrc);
  return b;
}

/** Decode a 64-byte trailer record, checking magic, version and its own crc. `at` = its image offset. */
export function decodeTrailer(b: Buffer, at: number): TrailerRecord {
  if (!b.subarray(0, 8).equals(TRAILER_MAGIC)) throw corrupt('trailer.magic', 'bad trailer magic', at);
  const trailerCrc = b.readUInt32BE(T.trailerCrc);
  if (crc32(b.subarray(0, T.trailerCrc)) !== trailerCrc) throw corrupt('trailer', 'trailer checksum mismatch', at);
  const version = b.readUInt32BE(T.version);
  if (!READ_VERSIONS.includes(version)) throw corrupt('trailer.version', `unsupported version ${version}`, at + T.version);
  const u64 = (off: number): number => readU64(b, off);
  return { version, blockSize: b.readUInt32BE(T.blockSize), totalLength: u64(T.totalLength),
    slotCount: u64(T.slotCount), zeroCount: u64(T.zeroCount), headerCrc: b.readUInt32BE(T.headerCrc),
    tablesCrc: b.readUInt32BE(T.tablesCrc), groupTableCrc: b.readUInt32BE(T.groupTableCrc),
    snapIdCrc: b.readUInt32BE(T.snapIdCrc), trailerCrc };
}
