// ImageProducer: serves the bytes of a planned image by random access (read) or sequentially
// (chunks/stream), reading data blocks through `readBlock(lbn)`. Invariants: every call returns
// identical bytes for the same range (given readBlock is deterministic for an immutable snapshot);
// memory is the plan's tables + header + one u32/flag per 1 MiB group + a few cached blocks.
// Group crcs are learnt from in-order block observations; the trailer computes the missing ones.

import { Readable } from 'node:stream';
import { Crc32, crc32 } from './crc32.js';
import { H, encodeHeader, encodeTrailer } from './header.js';
import { ImageError } from './imageError.js';
import { groupSlots, type ImagePlan } from './layout.js';
import { renderTables, tablesCrcOf } from './tables.js';

export type ReadBlock = (lbn: number) => Promise<Buffer>;

export interface ProducerOptions {
  /** Blocks read ahead by chunks()/stream() and by trailer computation (default 8). */
  readAhead?: number;
  /** Blocks kept for random access so a block split across two reads is fetched once (default 16). */
  cacheBlocks?: number;
  /** Approximate chunk size of chunks()/stream() (default 1 MiB). */
  chunkSize?: number;
}

export class ImageProducer {
  readonly plan: ImagePlan;
  readonly size: number;
  private readonly readBlock: ReadBlock;
  private readonly header: Buffer;
  private readonly tablesCrc: number;
  private readonly groupCrc: Uint32Array;
  private readonly groupKnown: Uint8Array;
  private running: { group: number; next: number; end: number; crc: Crc32; ahead: Map<number, Buffer> } | undefined;
  private readonly cache = new Map<number, Promise<Buffer>>();
  private trailer: Promise<Buffer> | undefined;
  private readonly readAhead: number;
  private readonly cacheBlocks: number;
  private readonly chunkSize: number;

  constructor(plan: ImagePlan, readBlock: ReadBlock, opts: ProducerOptions = {}) {
    this.plan = plan;
    this.size = plan.totalLength;
    this.readBlock = readBlock;
    this.tablesCrc = tablesCrcOf(plan);
    this.header = encodeHeader(plan, this.tablesCrc);
    this.groupCrc = new Uint32Array(plan.groupCount);
    this.groupKnown = new Uint8Array(plan.groupCount);
    this.readAhead = Math.max(1, opts.readAhead ?? 8);
    this.cacheBlocks = Math.max(1, opts.cacheBlocks ?? 16);
    this.chunkSize = Math.max(plan.blockSize, opts.chunkSize ?? 1 << 20);
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
      const first = Math.floor((pos - p.dataOffset) / p.blockSize);
      const last = Math.floor((e - 1 - p.dataOffset) / p.blockSize);
      const pending: Array<Promise<Buffer>> = [];
      for (let i = first; i <= last; i++) {
        while (first + pending.length <= last && first + pending.length < i + this.readAhead) {
          pending.push(this.fetchCached(first + pending.length));
        }
        const buf = await pending[i - first]!;
        this.observe(i, buf);
        const slotStart = p.dataOffset + i * p.blockSize;
        const a = Math.max(pos, slotStart);
        const b = Math.min(e, slotStart + p.blockSize);
        buf.copy(out, a - offset, a - slotStart, b - slotStart);
      }
      pos = e;
    }
    if (pos < end) {
      const t = await this.trailerBytes();
      t.copy(out, pos - offset, pos - p.groupTableOffset, end - p.groupTableOffset);
    }
    return end - offset;
  }

  /** The whole image in order, in ~chunkSize Buffers, reading `readAhead` blocks ahead. */
  async *chunks(): AsyncGenerator<Buffer> {
    const p = this.plan;
    for (let pos = 0; pos < p.dataOffset; pos += this.chunkSize) {
      yield await this.read(pos, Math.min(this.chunkSize, p.dataOffset - pos));
    }
    const queue: Array<Promise<Buffer>> = [];
    let batch: Buffer[] = [];
    let batchBytes = 0;
    for (let i = 0; i < p.slotCount; i++) {
      while (queue.length < this.readAhead && i + queue.length < p.slotCount) {
        const pr = this.load(i + queue.length);
        pr.catch(() => undefined); // awaited below; avoid unhandled rejection if the consumer stops
        queue.push(pr);
      }
      const buf = await queue.shift()!;
      this.observe(i, buf);
      batch.push(buf);
      batchBytes += buf.length;
      if (batchBytes >= this.chunkSize) {
        yield batch.length === 1 ? batch[0]! : Buffer.concat(batch, batchBytes);
        batch = [];
        batchBytes = 0;
      }
    }
    if (batchBytes > 0) yield Buffer.concat(batch, batchBytes);
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
    for (let g = 0; g < p.groupCount; g++) {
      if (!this.groupKnown[g]) await this.computeGroup(g);
    }
    const table = Buffer.allocUnsafe(4 * p.groupCount);
    for (let g = 0; g < p.groupCount; g++) table.writeUInt32BE(this.groupCrc[g]!, 4 * g);
    const rec = encodeTrailer({ blockSize: p.blockSize, totalLength: p.totalLength, slotCount: p.slotCount,
      zeroCount: p.zeroCount, headerCrc: this.header.readUInt32BE(H.headerCrc), tablesCrc: this.tablesCrc,
      groupTableCrc: crc32(table), snapIdCrc: crc32(p.snapId) });
    return Buffer.concat([table, rec]);
  }

  private async computeGroup(g: number): Promise<void> {
    const [first, end] = groupSlots(this.plan, g);
    const crc = new Crc32();
    const queue: Array<Promise<Buffer>> = [];
    for (let i = first; i < end; i++) {
      while (queue.length < this.readAhead && i + queue.length < end) {
        const pr = this.load(i + queue.length);
        pr.catch(() => undefined);
        queue.push(pr);
      }
      crc.update(await queue.shift()!);
    }
    this.groupCrc[g] = crc.digest();
    this.groupKnown[g] = 1;
  }

  /**
   * Feed a block to the running group crc. Concurrent reads (the kernel's readahead sends several FUSE
   * reads at once) deliver blocks slightly out of order: blocks ahead of the expected one wait in a small
   * map until their turn, so a sequential pass still learns every group crc and the trailer costs nothing.
   */
  private observe(slot: number, buf: Buffer): void {
    const p = this.plan;
    const g = Math.floor(slot / p.groupBlocks);
    if (this.groupKnown[g]) return;
    let r = this.running;
    if (!r) {
      const [first, end] = groupSlots(p, g);
      r = this.running = { group: g, next: first, end, crc: new Crc32(), ahead: new Map() };
    }
    if (slot < r.next) return; // already counted, or an older group re-read (computeGroup covers it)
    if (slot > r.next) {
      if (r.ahead.size < 256) r.ahead.set(slot, buf);
      return;
    }
    r.crc.update(buf);
    r.next++;
    for (;;) {
      if (r.next === r.end) {
        this.groupCrc[r.group] = r.crc.digest();
        this.groupKnown[r.group] = 1;
        const ng: number = r.group + 1;
        if (ng >= p.groupCount || this.groupKnown[ng]) {
          this.running = undefined;
          return;
        }
        const [first, end] = groupSlots(p, ng);
        r = this.running = { group: ng, next: first, end, crc: new Crc32(), ahead: r.ahead };
      }
      const b = r.ahead.get(r.next);
      if (!b) return;
      r.ahead.delete(r.next);
      r.crc.update(b);
      r.next++;
    }
  }

  private fetchCached(slot: number): Promise<Buffer> {
    let pr = this.cache.get(slot);
    if (pr) {
      this.cache.delete(slot); // refresh LRU position
    } else {
      pr = this.load(slot);
      pr.catch(() => this.cache.delete(slot));
    }
    this.cache.set(slot, pr);
    while (this.cache.size > this.cacheBlocks) this.cache.delete(this.cache.keys().next().value!);
    return pr;
  }

  private async load(slot: number): Promise<Buffer> {
    const lbn = this.plan.lbns[slot]!;
    const buf = await this.readBlock(lbn);
    if (!Buffer.isBuffer(buf) || buf.length !== this.plan.blockSize) {
      throw new ImageError('INVALID', `readBlock(${lbn})`, `returned ${buf?.length} bytes, expected ${this.plan.blockSize}`);
    }
    return buf;
  }
}
