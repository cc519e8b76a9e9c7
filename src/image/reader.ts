// Streaming, fully verifying parser of compacted-copy images from chunks of any size.
// Event order: header, tables, block (slot order), zero (zero-list order), end.
// IMPORTANT: data checksums live in the trailer, after the data, so block/zero events are
// delivered BEFORE they can be verified. Nothing is final until `end`: a consumer restoring must
// treat its output as provisional and discard it if the parser throws. `end` is emitted only after
// the trailer, every group crc and end-of-input (no appended bytes) have checked out.
// Any defect throws ImageError CORRUPT naming the first bad place (where) and image offset.

import { Crc32, crc32, crc32Each, crc32OfPieces } from '../util/crc32.js';
import { ByteSource, type ImageSource } from './byteSource.js';
import { checkHeaderPrefix, decodeHeader, decodeTrailer, readU64, type ImageHeader } from './header.js';
import { corrupt, type ImageError } from './imageError.js';
import { HEADER_LENGTH, TRAILER_RECORD_LENGTH, describeOffset, groupSlots, type ImageLayout } from './layout.js';

export interface ImageTables {
  /** slot i -> logical block number (distinct; strictly ascending in version 1 images). */
  lbns: Float64Array;
  /** slot i -> source physical block number. */
  pbns: Float64Array;
  /** logical blocks that became holes (delta images; strictly ascending). */
  zeros: Float64Array;
}

export interface ImageReport {
  header: ImageHeader;
  kind: 'full' | 'delta';
  totalLength: number; slotCount: number; zeroCount: number; groupCount: number; dataBytes: number;
}

export type ImageEvent =
  | { type: 'header'; header: ImageHeader }
  | { type: 'tables'; tables: ImageTables }
  /** `crcs`: with ReadOptions.pieceCrcs, the CRC-32 of each piece of the block's data. */
  | { type: 'block'; slot: number; lbn: number; data: Buffer; crcs?: Uint32Array }
  | { type: 'zero'; lbn: number }
  | { type: 'end'; report: ImageReport };

/** Callbacks for parseImage; all may be async (awaited in order, giving backpressure). */
export interface ImageHandler {
  header?(header: ImageHeader): void | Promise<void>;
  tables?(tables: ImageTables): void | Promise<void>;
  /**
   * Provisional until end(). `data` may be a view of an input chunk: copy it if the source reuses buffers.
   * `crcs`: with ReadOptions.pieceCrcs, the CRC-32 of each piece of `data`.
   */
  block?(lbn: number, data: Buffer, slot: number, crcs?: Uint32Array): void | Promise<void>;
  /** Provisional until end(). */
  zero?(lbn: number): void | Promise<void>;
  end?(report: ImageReport): void | Promise<void>;
}

const TABLE_PIECE = 8192; // entries decoded per read

export interface ReadOptions {
  /**
   * Give each block event the CRC-32 of every piece of this many bytes of its data (a divisor of the block
   * size; otherwise ignored). The groups' checksums are then combined from them (crc32OfPieces), so a
   * consumer that keeps such CRCs (a restore: the sectors' checksums) does not read the data a second time.
   */
  pieceCrcs?: number;
}

/** Parse and verify an image, yielding events in order. See the module comment about finality. */
export async function* readImage(source: ImageSource, opts: ReadOptions = {}): AsyncGenerator<ImageEvent, void, undefined> {
  let layout: ImageLayout | undefined;
  const src = new ByteSource(source, (pos) => corrupt(layout ? describeOffset(layout, pos) : 'header',
    `truncated: input ends at byte ${pos}`, pos));
  try {
    const prefix = Buffer.from(await src.read(16));
    checkHeaderPrefix(prefix);
    const headerBuf = Buffer.concat([prefix, await src.read(HEADER_LENGTH - 16)]);
    const header = decodeHeader(headerBuf);
    layout = header;
    yield { type: 'header', header };

    const tcrc = new Crc32();
    const readTable = async (offset: number, count: number, name: string, check: 'ascending' | 'inRange' | 'none'): Promise<Float64Array> => {
      const out = new Float64Array(count);
      let prev = -1;
      for (let i = 0; i < count; i += TABLE_PIECE) {
        const n = Math.min(TABLE_PIECE, count - i);
        const b = await src.read(8 * n);
        tcrc.update(b);
        for (let k = 0; k < n; k++) {
          const v = readU64(b, 8 * k);
          const at = offset + 8 * (i + k);
          if (v < 0) throw corrupt(`${name} entry ${i + k}`, 'value exceeds 2^53-1', at);
          if (check === 'ascending' && (v <= prev || v >= header.blockCount)) {
            throw corrupt(`${name} entry ${i + k}`, `lbn ${v} out of range or not strictly ascending`, at);
          }
          if (check === 'inRange' && v >= header.blockCount) throw corrupt(`${name} entry ${i + k}`, `lbn ${v} out of range`, at);
          out[i + k] = prev = v;
        }
      }
      return out;
    };
    // v1: slots in ascending lbn order; v2: slots in source physical order, lbns distinct (checked below)
    const lbns = await readTable(header.lbnTableOffset, header.slotCount, 'lbnTable', header.version === 1 ? 'ascending' : 'inRange');
    const pbns = await readTable(header.pbnTableOffset, header.slotCount, 'pbnTable', 'none');
    const zeros = await readTable(header.zeroTableOffset, header.zeroCount, 'zeroTable', 'ascending');
    const pad = await src.read(header.dataOffset - header.tablesEnd);
    tcrc.update(pad);
    if (tcrc.digest() !== header.tablesCrc) throw corrupt('tables', 'tables checksum mismatch', header.lbnTableOffset);
    const nz = pad.findIndex((x) => x !== 0);
    if (nz >= 0) throw corrupt('tablePadding', 'non-zero padding', header.tablesEnd + nz);
    const sortedLbns = header.version === 1 ? lbns : lbns.slice().sort();
    for (let i = 1; i < sortedLbns.length && header.version !== 1; i++) {
      if (sortedLbns[i]! === sortedLbns[i - 1]!) {
        const at = lbns.indexOf(sortedLbns[i]!, lbns.indexOf(sortedLbns[i]!) + 1);
        throw corrupt(`lbnTable entry ${at}`, `lbn ${sortedLbns[i]} appears twice`, header.lbnTableOffset + 8 * at);
      }
    }
    for (let i = 0, j = 0; i < sortedLbns.length && j < zeros.length;) {
      if (sortedLbns[i]! === zeros[j]!) throw corrupt(`zeroTable entry ${j}`, `lbn ${zeros[j]} is also a data lbn`, header.zeroTableOffset + 8 * j);
      if (sortedLbns[i]! < zeros[j]!) i++; else j++;
    }
    yield { type: 'tables', tables: { lbns, pbns, zeros } };

    const groupCrcs = new Uint32Array(header.groupCount);
    const bs = header.blockSize;
    const piece = opts.pieceCrcs !== undefined && opts.pieceCrcs > 0 && bs % opts.pieceCrcs === 0 ? opts.pieceCrcs : 0;
    const dcrc = new Crc32();
    /** With pieces: the CRC-32 of each block of the current group so far. */
    const blockCrcs = new Uint32Array(piece ? header.groupBlocks : 0);
    for (let i = 0; i < header.slotCount; i++) {
      const data = await src.read(bs);
      const inGroup = i % header.groupBlocks;
      const last = inGroup + 1 === header.groupBlocks || i + 1 === header.slotCount;
      let crcs: Uint32Array | undefined;
      if (piece) {
        const each = crc32Each(data, piece);
        crcs = each;
        blockCrcs[inGroup] = crc32OfPieces(piece, each.length, (k) => each[k]!);
        if (last) groupCrcs[Math.floor(i / header.groupBlocks)] = crc32OfPieces(bs, inGroup + 1, (k) => blockCrcs[k]!);
      } else {
        dcrc.update(data);
        if (last) {
          groupCrcs[Math.floor(i / header.groupBlocks)] = dcrc.digest();
          dcrc.reset();
        }
      }
      yield crcs ? { type: 'block', slot: i, lbn: lbns[i]!, data, crcs } : { type: 'block', slot: i, lbn: lbns[i]!, data };
    }
    for (let j = 0; j < zeros.length; j++) yield { type: 'zero', lbn: zeros[j]! };

    const table = Buffer.from(await src.read(4 * header.groupCount));
    checkTrailer(header, table, Buffer.from(await src.read(TRAILER_RECORD_LENGTH)));
    for (let g = 0; g < header.groupCount; g++) {
      if (table.readUInt32BE(4 * g) !== groupCrcs[g]) throw groupMismatch(header, g);
    }
    if (!(await src.atEnd())) {
      throw corrupt('eof', 'unexpected bytes after the end of the image (appended or concatenated data)', header.totalLength);
    }
    yield { type: 'end', report: {
      header, kind: header.kind, totalLength: header.totalLength, slotCount: header.slotCount,
      zeroCount: header.zeroCount, groupCount: header.groupCount, dataBytes: header.dataLength,
    } };
  } finally {
    await src.close();
  }
}

/**
 * The trailer area: the 64-byte trailer record `rec` must match the header, and the group checksum table
 * `groupTable` (4 × groupCount bytes) its own checksum. Throws ImageError CORRUPT naming the first mismatch.
 */
export function checkTrailer(header: ImageHeader, groupTable: Buffer, rec: Buffer): void {
  const t = decodeTrailer(rec, header.trailerOffset);
  const mismatch = (field: string, ok: boolean): void => {
    if (!ok) throw corrupt(`trailer.${field}`, 'trailer does not match header', header.trailerOffset);
  };
  mismatch('version', t.version === header.version);
  mismatch('totalLength', t.totalLength === header.totalLength);
  mismatch('slotCount', t.slotCount === header.slotCount);
  mismatch('zeroCount', t.zeroCount === header.zeroCount);
  mismatch('blockSize', t.blockSize === header.blockSize);
  mismatch('headerCrc', t.headerCrc === header.headerCrc);
  mismatch('tablesCrc', t.tablesCrc === header.tablesCrc);
  mismatch('snapIdCrc', t.snapIdCrc === crc32(header.snapId));
  if (crc32(groupTable) !== t.groupTableCrc) throw corrupt('groupTable', 'group table checksum mismatch', header.groupTableOffset);
}

/** The error for checksum group g whose data does not match its entry in the group table. */
export function groupMismatch(header: ImageLayout, g: number): ImageError {
  const [first] = groupSlots(header, g);
  return corrupt(`data group ${g} (slots ${first}..)`, 'data checksum mismatch', header.dataOffset + first * header.blockSize);
}

/** Callback form of readImage; resolves with the report after end(), rejects with ImageError. */
export async function parseImage(source: ImageSource, handler: ImageHandler, opts: ReadOptions = {}): Promise<ImageReport> {
  for await (const ev of readImage(source, opts)) {
    switch (ev.type) {
      case 'header': await handler.header?.(ev.header); break;
      case 'tables': await handler.tables?.(ev.tables); break;
      case 'block': await handler.block?.(ev.lbn, ev.data, ev.slot, ev.crcs); break;
      case 'zero': await handler.zero?.(ev.lbn); break;
      case 'end': await handler.end?.(ev.report); return ev.report;
    }
  }
  throw corrupt('eof', 'image ended without a verified trailer');
}

