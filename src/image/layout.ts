// Pure layout planning for compacted-copy images (see FORMAT.md). Everything here is a function of
// the lbn lists only: the exact image size and every offset are known before any data is read.
// Invariants: data slot i is at dataOffset + i*blockSize; dataOffset is 4096-aligned; nothing in
// a plan is proportional to the virtual size (only to the number of used blocks and zero lbns).

import { invalid } from './imageError.js';

export const HEADER_LENGTH = 4096;
export const TABLE_ALIGN = 4096;
export const TRAILER_RECORD_LENGTH = 64;
export const MIN_BLOCK_SIZE = 4096;
export const MAX_BLOCK_SIZE = 1 << 20;
/** Target bytes per checksum group; groupBlocks = max(1, GROUP_BYTES / blockSize). */
export const GROUP_BYTES = 1 << 20;
/** Longest UTF-8 identity string (a 512-byte header slot minus its u16 length prefix). */
export const MAX_STRING_BYTES = 510;

export interface ImageIdentity {
  diskName: string; snapName: string; snapId: string; snapCreated: number;
  baseSnapId?: string; baseSnapName?: string;
}

export interface ImagePlanInput extends ImageIdentity {
  kind: 'full' | 'delta'; virtualSize: number; blockSize: number;
  dataLbns: ArrayLike<number>;   // slot i -> lbn, ascending
  sourcePbns: ArrayLike<number>; // slot i -> source physical block number (same length)
  zeroLbns: ArrayLike<number>;   // delta only: lbns that became holes, ascending; [] for full
  sourceAllocated: number;       // allocated blocks in the source snapshot
  /**
   * Format version to write (default 2). Version 2 puts the slots in ascending source pbn order (the
   * producer then reads the pool sequentially); version 1 keeps the ascending lbn order of dataLbns.
   */
  version?: 1 | 2;
}

/** Every offset of an image; derived from (headerLength, blockSize, slotCount, zeroCount, groupBlocks). */
export interface ImageLayout {
  headerLength: number; blockSize: number; slotCount: number; zeroCount: number;
  groupBlocks: number; groupCount: number;
  lbnTableOffset: number; pbnTableOffset: number; zeroTableOffset: number; tablesEnd: number;
  dataOffset: number; dataLength: number; groupTableOffset: number; trailerOffset: number;
  totalLength: number;
}

export interface ImagePlan extends ImageLayout, ImageIdentity {
  version: 1 | 2;
  kind: 'full' | 'delta'; virtualSize: number; blockCount: number; sourceAllocated: number;
  lbns: Float64Array; pbns: Float64Array; zeros: Float64Array; // private copies of the input
}

export type ImageRegion = 'header' | 'lbnTable' | 'pbnTable' | 'zeroTable' | 'tablePadding'
  | 'data' | 'groupTable' | 'trailer' | 'eof';

export interface ImageLocation {
  region: ImageRegion;
  regionStart: number; regionEnd: number;
  /** Entry index: slot for data, entry for tables, group for groupTable; 0 otherwise. */
  index: number;
  /** Byte offset inside that entry/block (inside the region for header/padding/trailer/eof). */
  within: number;
}

const alignUp = (n: number, a: number): number => Math.ceil(n / a) * a;
export const isPow2 = (n: number): boolean => Number.isSafeInteger(n) && n > 0 && (n & (n - 1)) === 0;
export const defaultGroupBlocks = (blockSize: number): number => Math.max(1, Math.floor(GROUP_BYTES / blockSize));

export function computeLayout(p: { headerLength: number; blockSize: number; slotCount: number;
  zeroCount: number; groupBlocks: number }): ImageLayout {
  const lbnTableOffset = p.headerLength;
  const pbnTableOffset = lbnTableOffset + 8 * p.slotCount;
  const zeroTableOffset = pbnTableOffset + 8 * p.slotCount;
  const tablesEnd = zeroTableOffset + 8 * p.zeroCount;
  const dataOffset = alignUp(tablesEnd, TABLE_ALIGN);
  const dataLength = p.slotCount * p.blockSize;
  const groupCount = Math.ceil(p.slotCount / p.groupBlocks);
  const groupTableOffset = dataOffset + dataLength;
  const trailerOffset = groupTableOffset + 4 * groupCount;
  const totalLength = trailerOffset + TRAILER_RECORD_LENGTH;
  return { headerLength: p.headerLength, blockSize: p.blockSize, slotCount: p.slotCount,
    zeroCount: p.zeroCount, groupBlocks: p.groupBlocks, groupCount, lbnTableOffset, pbnTableOffset,
    zeroTableOffset, tablesEnd, dataOffset, dataLength, groupTableOffset, trailerOffset, totalLength };
}

function checkCount(name: string, v: number): void {
  if (!Number.isSafeInteger(v) || v < 0) throw invalid(name, `must be a non-negative safe integer, got ${v}`);
}

function checkString(name: string, s: unknown, required: boolean): void {
  if (s === undefined || s === '') {
    if (required) throw invalid(name, 'is required');
    return;
  }
  if (typeof s !== 'string') throw invalid(name, 'must be a string');
  const b = Buffer.from(s, 'utf8');
  if (b.length > MAX_STRING_BYTES) throw invalid(name, `longer than ${MAX_STRING_BYTES} UTF-8 bytes`);
  if (b.toString('utf8') !== s) throw invalid(name, 'is not well-formed Unicode');
}

/** Copy and validate an ascending lbn list (strictly ascending, each < blockCount). */
function copyLbns(name: string, src: ArrayLike<number>, blockCount: number): Float64Array {
  const out = new Float64Array(src.length);
  let prev = -1;
  for (let i = 0; i < src.length; i++) {
    const v = src[i]!;
    if (!Number.isSafeInteger(v) || v < 0 || v >= blockCount) {
      throw invalid(`${name}[${i}]`, `lbn ${v} outside 0..${blockCount - 1}`);
    }
    if (v <= prev) throw invalid(`${name}[${i}]`, `lbn ${v} not strictly ascending after ${prev}`);
    out[i] = prev = v;
  }
  return out;
}

/** Validate the input and compute the complete, exact layout of the image. Throws ImageError INVALID. */
export function planImage(input: ImagePlanInput): ImagePlan {
  const { kind, virtualSize, blockSize } = input;
  if (kind !== 'full' && kind !== 'delta') throw invalid('kind', `must be 'full' or 'delta'`);
  if (!isPow2(blockSize) || blockSize < MIN_BLOCK_SIZE || blockSize > MAX_BLOCK_SIZE) {
    throw invalid('blockSize', `must be a power of two in ${MIN_BLOCK_SIZE}..${MAX_BLOCK_SIZE}, got ${blockSize}`);
  }
  checkCount('virtualSize', virtualSize);
  checkCount('sourceAllocated', input.sourceAllocated);
  checkCount('snapCreated', input.snapCreated);
  checkString('diskName', input.diskName, false);
  checkString('snapName', input.snapName, false);
  checkString('snapId', input.snapId, true);
  checkString('baseSnapId', input.baseSnapId, kind === 'delta');
  checkString('baseSnapName', input.baseSnapName, false);
  if (kind === 'full' && (input.baseSnapId || input.baseSnapName)) {
    throw invalid('baseSnapId', 'a full image has no base snapshot');
  }
  if (kind === 'full' && input.zeroLbns.length > 0) throw invalid('zeroLbns', 'must be empty for a full image');
  if (input.sourcePbns.length !== input.dataLbns.length) {
    throw invalid('sourcePbns', `length ${input.sourcePbns.length} != dataLbns length ${input.dataLbns.length}`);
  }
  const blockCount = Math.ceil(virtualSize / blockSize);
  const lbns = copyLbns('dataLbns', input.dataLbns, blockCount);
  const zeros = copyLbns('zeroLbns', input.zeroLbns, blockCount);
  const pbns = new Float64Array(input.sourcePbns.length);
  for (let i = 0; i < pbns.length; i++) {
    const v = input.sourcePbns[i]!;
    if (!Number.isSafeInteger(v) || v < 0) throw invalid(`sourcePbns[${i}]`, `bad pbn ${v}`);
    pbns[i] = v;
  }
  for (let i = 0, j = 0; i < lbns.length && j < zeros.length;) {
    if (lbns[i]! === zeros[j]!) throw invalid(`zeroLbns[${j}]`, `lbn ${zeros[j]} is also a data lbn`);
    if (lbns[i]! < zeros[j]!) i++; else j++;
  }
  const version = input.version ?? 2;
  if (version !== 1 && version !== 2) throw invalid('version', `must be 1 or 2, got ${String(version)}`);
  const layout = computeLayout({ headerLength: HEADER_LENGTH, blockSize, slotCount: lbns.length,
    zeroCount: zeros.length, groupBlocks: defaultGroupBlocks(blockSize) });
  if (!Number.isSafeInteger(layout.totalLength)) throw invalid('dataLbns', 'image too large');
  if (version === 2) physicalOrder(lbns, pbns);
  const plan: ImagePlan = { ...layout, version, kind, virtualSize, blockCount, sourceAllocated: input.sourceAllocated,
    diskName: input.diskName ?? '', snapName: input.snapName ?? '', snapId: input.snapId,
    snapCreated: input.snapCreated, lbns, pbns, zeros };
  if (kind === 'delta') {
    plan.baseSnapId = input.baseSnapId!;
    if (input.baseSnapName) plan.baseSnapName = input.baseSnapName;
  }
  return plan;
}

/**
 * Reorder the slots (lbns[i], pbns[i]) in place into ascending pbn order (ties, which a consistent view
 * does not have, by lbn): the order of version 2 images. Already-ordered input (a disk written
 * sequentially) costs one pass.
 */
export function physicalOrder(lbns: Float64Array, pbns: Float64Array): void {
  let sorted = true;
  for (let i = 1; i < pbns.length && sorted; i++) sorted = pbns[i - 1]! < pbns[i]!;
  if (sorted) return;
  const idx = new Uint32Array(pbns.length);
  for (let i = 0; i < idx.length; i++) idx[i] = i;
  idx.sort((a, b) => pbns[a]! - pbns[b]! || lbns[a]! - lbns[b]!);
  const l = lbns.slice();
  const p = pbns.slice();
  for (let i = 0; i < idx.length; i++) {
    lbns[i] = l[idx[i]!]!;
    pbns[i] = p[idx[i]!]!;
  }
}

/**
 * Runs of consecutive pbns among slots [first, end): [startSlot, count] pairs where slots startSlot ..
 * startSlot+count-1 hold pbns p, p+1, ..., each run at most maxBlocks long. Pure; the producer reads one
 * run with one request.
 */
export function pbnRuns(pbns: ArrayLike<number>, first: number, end: number, maxBlocks = Infinity): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  for (let i = first; i < end;) {
    let n = 1;
    while (i + n < end && n < maxBlocks && pbns[i + n]! === pbns[i]! + n) n++;
    out.push([i, n]);
    i += n;
  }
  return out;
}

/** Map an absolute byte offset to its region. Offsets >= totalLength map to 'eof'. */
export function locate(l: ImageLayout, offset: number): ImageLocation {
  const at = (region: ImageRegion, start: number, end: number, entry: number): ImageLocation => {
    const rel = offset - start;
    return { region, regionStart: start, regionEnd: end, index: Math.floor(rel / entry), within: rel % entry };
  };
  if (!Number.isSafeInteger(offset) || offset < 0) throw invalid('offset', `bad offset ${offset}`);
  if (offset < l.headerLength) return at('header', 0, l.headerLength, l.headerLength);
  if (offset < l.pbnTableOffset) return at('lbnTable', l.lbnTableOffset, l.pbnTableOffset, 8);
  if (offset < l.zeroTableOffset) return at('pbnTable', l.pbnTableOffset, l.zeroTableOffset, 8);
  if (offset < l.tablesEnd) return at('zeroTable', l.zeroTableOffset, l.tablesEnd, 8);
  if (offset < l.dataOffset) return at('tablePadding', l.tablesEnd, l.dataOffset, l.dataOffset - l.tablesEnd);
  if (offset < l.groupTableOffset) return at('data', l.dataOffset, l.groupTableOffset, l.blockSize);
  if (offset < l.trailerOffset) return at('groupTable', l.groupTableOffset, l.trailerOffset, 4);
  if (offset < l.totalLength) return at('trailer', l.trailerOffset, l.totalLength, TRAILER_RECORD_LENGTH);
  return { region: 'eof', regionStart: l.totalLength, regionEnd: Infinity, index: 0, within: offset - l.totalLength };
}

/** Human-readable place name for an offset, e.g. "data slot 3 +17", "lbnTable entry 5". */
export function describeOffset(l: ImageLayout, offset: number): string {
  const loc = locate(l, offset);
  switch (loc.region) {
    case 'data': return `data slot ${loc.index} +${loc.within}`;
    case 'lbnTable': case 'pbnTable': case 'zeroTable': return `${loc.region} entry ${loc.index}`;
    case 'groupTable': return `groupTable group ${loc.index}`;
    default: return `${loc.region} +${loc.within}`;
  }
}

/** Slots [first, end) belonging to checksum group g. */
export function groupSlots(l: ImageLayout, g: number): [number, number] {
  const first = g * l.groupBlocks;
  return [first, Math.min(l.slotCount, first + l.groupBlocks)];
}
