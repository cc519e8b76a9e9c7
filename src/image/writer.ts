// ImageProducer: serves the bytes of a planned image by random access (read) or sequentially
// (chunks/stream). Data is read, cached and checksummed in *pieces* of whole checksum groups (2 MiB by
// default) through a SlotReader, which fills a piece with one call (the snapshot reader coalesces slots of
// consecutive physical blocks into one large read: version 2 images put slots in physical order). A
// sequential reader gets `readAhead` pieces read ahead of it. Invariants: every call returns identical
// bytes for the same range (given the source is immutable); every piece loaded gives the crcs of the
// groups it holds, so a sequential pass learns all of them and the trailer costs nothing; memory is the
// plan's tables + header + one u32/flag per group + `pieces` piece buffers (more only while every buffer
// is pinned by a request in progress).

import { Readable } from 'node:stream';
import { crc32, crc32OfPieces } from '../util/crc32.js';
import { H, encodeHeader, encodeTrailer } from './header.js';
import { ImageError } from './imageError.js';
import { groupSlots, type ImagePlan } from './layout.js';
import { renderTables, tablesCrcOf } from './tables.js';

export type ReadBlock = (lbn: number) => Promise<Buffer>;

/** Reads the data of slots for a producer (the fast path; a ReadBlock is wrapped into one). */
export interface SlotReader {
  /**
   * Fill dst (exactly count × blockSize bytes) with the data of slots [first, first+count). May return the
   * CRC-32 of each slot's data (a reader that checks what it read has computed them): the producer then
   * combines its groups' CRCs from them instead of reading the data a second time.
   */
  readSlots(first: number, count: number, dst: Buffer): Promise<void | Uint32Array>;
  /** Memory for the piece buffers (e.g. aligned for O_DIRECT); default Buffer.allocUnsafeSlow. */
  alloc?(bytes: number): Promise<Buffer>;
}

export interface ProducerOptions {
  /** Bytes per piece, rounded down to whole checksum groups (at least one group; default 2 MiB). */
  pieceBytes?: number;
  /** Piece buffers kept (default 16). */
  pieces?: number;
  /** Pieces read ahead of a sequential reader (default 8). */
  readAhead?: number;
}

interface Piece {
  idx: number;
  buf: Buffer;
  /** Resolves when buf holds piece idx (rejects on a read error; the piece is then dropped). */
  ready: Promise<void>;
  loaded: boolean;
  pins: number;
  used: number;
}

export class ImageProducer {
  readonly plan: ImagePlan;
  readonly size: number;
  private readonly reader: SlotReader;
  private readonly header: Buffer;
  private readonly tablesCrc: number;
  private readonly groupCrc: Uint32Array;
  private readonly groupKnown: Uint8Array;
  private trailer: Promise<Buffer> | undefined;
  private readonly readAhead: number;
  private readonly maxPieces: number;
  /** Slots per piece (a multiple of groupBlocks). */
  readonly pieceSlots: number;
  private readonly pieceCount: number;
  private readonly byIdx = new Map<number, Piece>();
  private free: Buffer[] = [];
  private arena: Promise<void> | undefined;
  private tick = 0;
  /** Index of the last piece a reader asked for (-2: none). */
  private lastPiece = -2;

  constructor(plan: ImagePlan, source: ReadBlock | SlotReader, opts: ProducerOptions = {}) {
    this.plan = plan;
    this.size = plan.totalLength;
    this.reader = typeof source === 'function' ? blockReader(plan, source) : source;
    this.tablesCrc = tablesCrcOf(plan);
    this.header = encodeHeader(plan, this.tablesCrc);
    this.groupCrc = new Uint32Array(plan.groupCount);
    this.groupKnown = new Uint8Array(plan.groupCount);
    const groupBytes = plan.groupBlocks * plan.blockSize;
    this.pieceSlots = plan.groupBlocks * Math.max(1, Math.floor((opts.pieceBytes ?? 2 << 20) / groupBytes));
    this.pieceCount = Math.ceil(plan.slotCount / this.pieceSlots);
    this.maxPieces = Math.max(2, opts.pieces ?? 16);
    this.readAhead = Math.max(0, Math.min(this.maxPieces - 2, opts.readAhead ?? 8));
  }

  /** Bytes [offset, offset+length) of the image, clamped at EOF (empty Buffer at/after EOF). */
  async read(offset: number, length: number): Promise<Buffer> {
    if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length < 0) {
      throw new ImageError('INVALID', 'read', `bad range ${offset}+${length}`);
    }
    const end = Math.min(this.plan.totalLength, offset + length);
    if (offset >= end) return Buffer.alloc(0);
    const out = Buffer.allocUnsafe(end - offset);
    await this.readInto(offset, out);
    return out;
  }

  /** Fill `out` with the image bytes at `offset` (clamped at EOF); returns the number of bytes filled. */
  async readInto(offset: number, out: Buffer): Promise<number> {
    if (!Number.isSafeInteger(offset) || offset < 0) throw new ImageError('INVALID', 'read', `bad offset ${offset}`);
    const p = this.plan;
    const end = Math.min(p.totalLength, offset + out.length);
    if (offset >= end) return 0;
    let pos = offset;
    if (pos < p.headerLength) {
      const e = Math.min(end, p.headerLength);
      this.header.copy(out, 0, pos, e);
      pos = e;
    }
    if (pos < end && pos < p.dataOffset) {
      const e = Math.min(end, p.dataOffset);
      renderTables(p, pos, e, out, pos - offset);
      pos = e;
    }
    if (pos < end && pos < p.groupTableOffset) {
      const e = Math.min(end, p.groupTableOffset);
      const bytesPerPiece = this.pieceSlots * p.blockSize;
      const first = Math.floor((pos - p.dataOffset) / bytesPerPiece);
      const last = Math.floor((e - 1 - p.dataOffset) / bytesPerPiece);
      // the kernel's readahead sends several requests at once, slightly out of order: near the last piece
      // asked for counts as sequential, and the reader's place never moves back for it
      const sequential = first >= this.lastPiece - 1 && first <= this.lastPiece + 2;
      this.lastPiece = sequential ? Math.max(this.lastPiece, last) : last;
      const pieces: Piece[] = [];
      for (let k = first; k <= last; k++) pieces.push(this.pin(k));
      if (sequential || first === 0) this.prefetch(last + 1, last + 1 + this.readAhead);
      try {
        for (const pc of pieces) {
          await pc.ready;
          const start = p.dataOffset + pc.idx * bytesPerPiece;
          const a = Math.max(pos, start);
          const b = Math.min(e, start + bytesPerPiece);
          pc.buf.copy(out, a - offset, a - start, b - start);
        }
      } finally {
        for (const pc of pieces) this.unpin(pc);
      }
      pos = e;
    }
    if (pos < end) {
      const t = await this.trailerBytes();
      t.copy(out, pos - offset, pos - p.groupTableOffset, end - p.groupTableOffset);
    }
    return end - offset;
  }

  /**
   * The whole image in order: header and tables in pieces of at most 1 MiB, then one Buffer per data piece
   * (a private copy; with `borrow`, a view of the piece that stays valid only until the next chunk is asked
   * for: for a consumer that writes each chunk before asking for the next), then the trailer; `readAhead`
   * pieces are read ahead.
   */
  async *chunks(opts: { borrow?: boolean } = {}): AsyncGenerator<Buffer> {
    const p = this.plan;
    for (let pos = 0; pos < p.dataOffset; pos += 1 << 20) {
      yield await this.read(pos, Math.min(1 << 20, p.dataOffset - pos));
    }
    for (let k = 0; k < this.pieceCount; k++) {
      const pc = this.pin(k);
      this.lastPiece = k;
      this.prefetch(k + 1, k + 1 + this.readAhead);
      let copy: Buffer;
      try {
        await pc.ready;
        const [first, end] = this.pieceRange(k);
        if (opts.borrow) {
          yield pc.buf.subarray(0, (end - first) * p.blockSize);
          continue;
        }
        copy = Buffer.allocUnsafe((end - first) * p.blockSize);
        pc.buf.copy(copy, 0, 0, copy.length);
      } finally {
        this.unpin(pc);
      }
      yield copy;
    }
    yield Buffer.from(await this.trailerBytes());
  }

  /** chunks() as a byte-mode Readable. */
  stream(): Readable {
    return Readable.from(this.chunks(), { objectMode: false });
  }

  /** Group table + trailer record (computes any group crc not yet learnt, reading those groups). */
  trailerBytes(): Promise<Buffer> {
    if (!this.trailer) {
      this.trailer = this.buildTrailer();
      this.trailer.catch(() => { this.trailer = undefined; });
    }
    return this.trailer;
  }

  private async buildTrailer(): Promise<Buffer> {
    const p = this.plan;
    for (let k = 0; k < this.pieceCount; k++) {
      const [first, end] = this.pieceRange(k);
      let known = true;
      for (let g = first / p.groupBlocks; g < Math.ceil(end / p.groupBlocks) && known; g++) known = !!this.groupKnown[g];
      if (known) continue;
      const pc = this.pin(k);
      this.lastPiece = k;
      this.prefetch(k + 1, k + 1 + this.readAhead);
      try {
        await pc.ready; // loading a piece learns its groups' crcs
      } finally {
        this.unpin(pc);
      }
    }
    const table = Buffer.allocUnsafe(4 * p.groupCount);
    for (let g = 0; g < p.groupCount; g++) table.writeUInt32BE(this.groupCrc[g]!, 4 * g);
    const rec = encodeTrailer({ version: p.version, blockSize: p.blockSize, totalLength: p.totalLength, slotCount: p.slotCount,
      zeroCount: p.zeroCount, headerCrc: this.header.readUInt32BE(H.headerCrc), tablesCrc: this.tablesCrc,
      groupTableCrc: crc32(table), snapIdCrc: crc32(p.snapId) });
    return Buffer.concat([table, rec]);
  }

  /** Slots [first, end) of piece k. */
  private pieceRange(k: number): [number, number] {
    const first = k * this.pieceSlots;
    return [first, Math.min(this.plan.slotCount, first + this.pieceSlots)];
  }

  /** Piece k, loading it if needed; pinned (its buffer is not reused) until unpin(). */
  private pin(k: number): Piece {
    let pc = this.byIdx.get(k);
    if (!pc) pc = this.load(k);
    pc.pins++;
    pc.used = ++this.tick;
    return pc;
  }

  private unpin(pc: Piece): void {
    pc.pins--;
  }

  /** Start loading pieces [from, to) that are not cached, while a buffer is free or one behind the reader. */
  private prefetch(from: number, to: number): void {
    for (let k = from; k < Math.min(to, this.pieceCount); k++) {
      if (this.byIdx.has(k)) continue;
      const room = this.free.length > 0 || this.byIdx.size < this.maxPieces || this.victim()?.idx! < this.lastPiece;
      if (!room) return;
      this.load(k);
    }
  }

  /**
   * A loaded, unpinned piece whose buffer may be reused: of those behind the reader's last piece the least
   * recently used, else the one furthest ahead.
   */
  private victim(): Piece | undefined {
    let best: Piece | undefined;
    const behind = (pc: Piece): boolean => pc.idx < this.lastPiece;
    for (const pc of this.byIdx.values()) {
      if (pc.pins > 0 || !pc.loaded) continue;
      if (!best) best = pc;
      else if (behind(pc) !== behind(best)) best = behind(pc) ? pc : best;
      else if (behind(pc) ? pc.used < best.used : pc.idx > best.idx) best = pc;
    }
    return best;
  }

  private load(k: number): Piece {
    const p = this.plan;
    const pc: Piece = { idx: k, buf: Buffer.alloc(0), ready: Promise.resolve(), loaded: false, pins: 0, used: ++this.tick };
    this.byIdx.set(k, pc);
    const [first, end] = this.pieceRange(k);
    const bytes = (end - first) * p.blockSize;
    const take = (): Buffer => {
      const b = this.free.pop();
      if (b) return b;
      const v = this.victim();
      if (v) {
        this.byIdx.delete(v.idx);
        return v.buf;
      }
      return Buffer.allocUnsafeSlow(this.pieceSlots * p.blockSize); // every buffer pinned: one more, for now
    };
    this.arena ??= this.makeArena();
    pc.ready = (async () => {
      await this.arena; // resolved after the first time; loads resume in the order they were asked for
      const buf = take();
      pc.buf = buf;
      let crcs: void | Uint32Array;
      try {
        crcs = await this.reader.readSlots(first, end - first, buf.subarray(0, bytes));
      } catch (e) {
        if (this.byIdx.get(k) === pc) this.byIdx.delete(k);
        this.free.push(buf);
        throw e;
      }
      for (let g = first / p.groupBlocks; g * p.groupBlocks < end; g++) {
        if (this.groupKnown[g]) continue;
        const [a, b] = groupSlots(p, g);
        this.groupCrc[g] = crcs
          ? crc32OfPieces(p.blockSize, b - a, (i) => crcs[a - first + i]!)
          : crc32(buf.subarray((a - first) * p.blockSize, (b - first) * p.blockSize));
        this.groupKnown[g] = 1;
      }
      pc.loaded = true;
    })();
    pc.ready.catch(() => undefined); // awaited by whoever pinned it
    return pc;
  }

  private async makeArena(): Promise<void> {
    const bytes = this.pieceSlots * this.plan.blockSize;
    const arena = this.reader.alloc ? await this.reader.alloc(bytes * this.maxPieces) : Buffer.allocUnsafeSlow(bytes * this.maxPieces);
    for (let i = 0; i < this.maxPieces; i++) this.free.push(arena.subarray(i * bytes, (i + 1) * bytes));
  }
}

/** A SlotReader over a per-block reader: every block of the slots read at once, each checked and copied. */
export function blockReader(plan: ImagePlan, readBlock: ReadBlock): SlotReader {
  const bs = plan.blockSize;
  return {
    readSlots: async (first, count, dst) => {
      await Promise.all(Array.from({ length: count }, async (_, i) => {
        const lbn = plan.lbns[first + i]!;
        const buf = await readBlock(lbn);
        if (!Buffer.isBuffer(buf) || buf.length !== bs) {
          throw new ImageError('INVALID', `readBlock(${lbn})`, `returned ${buf?.length} bytes, expected ${bs}`);
        }
        buf.copy(dst, i * bs);
      }));
    },
  };
}
