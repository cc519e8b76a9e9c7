// Images used without restoring them (attach, merge): an image file opened for random access, and a chain
// of a full image and the deltas that follow it, read as the disk the last one describes.
// At open, as a restore would: the header and tables are read and verified (the parser of reader.ts, which
// stops after the tables), then the trailer record and the group checksum table (checkTrailer). Data is
// verified by checksum group when a group is first read (its bytes are kept in a small cache of recent
// groups; a group checked once is afterwards read only where asked, so random readers do not read a whole
// group per request): a damaged group is CORRUPT for the blocks in it, every other block stays readable.
// A chain links when each delta's base snapshot id is the id of the image before it (FORMAT.md: snapId,
// baseSnapId) and the block sizes agree; anything else is refused at open, naming the link.

import { constants } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { crc32 } from '../util/crc32.js';
import { fileChunks } from './fileSource.js';
import { checkTrailer, groupMismatch, readImage, type ImageTables } from './reader.js';
import type { ImageHeader } from './header.js';
import { TRAILER_RECORD_LENGTH } from './layout.js';
import { corrupt } from './imageError.js';
import { invalid } from '../errors.js';

/** Verified checksum groups kept per image (1 MiB each with the default group size). */
const CACHED_GROUPS = 16;

export class SeekableImage {
  private groups = new Map<number, Buffer>();
  private groupCrcs!: Buffer;
  /** Groups whose checksum has been checked once: later reads of them read just the bytes asked for. */
  private verified!: Uint8Array;

  private constructor(
    readonly path: string,
    private readonly fh: FileHandle,
    readonly header: ImageHeader,
    readonly tables: ImageTables,
  ) {}

  static async open(path: string): Promise<SeekableImage> {
    // O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused just below); no effect on files.
    const fh = await open(path, constants.O_RDONLY | constants.O_NONBLOCK);
    try {
      const st = await fh.stat();
      if (!st.isFile() && !st.isBlockDevice()) {
        throw invalid(`${path}: an attached or merged image must be a file that can be read at any offset (not a pipe or a tape); copy it to a file first`);
      }
      let header: ImageHeader | undefined;
      let tables: ImageTables | undefined;
      for await (const ev of readImage(fileChunks(path, { chunkBytes: 1 << 20, ahead: 1 }))) {
        if (ev.type === 'header') header = ev.header;
        else if (ev.type === 'tables') {
          tables = ev.tables;
          break;
        }
      }
      if (!header || !tables) throw corrupt('eof', `truncated: ${path} ends before its tables`);
      if (st.isFile() && st.size !== header.totalLength) {
        throw corrupt('eof', `${path} is ${st.size} bytes, the image says ${header.totalLength}${st.size < header.totalLength ? ' (truncated)' : ' (bytes appended)'}`, Math.min(st.size, header.totalLength));
      }
      const img = new SeekableImage(path, fh, header, tables);
      const trailer = await img.readAt(header.groupTableOffset, 4 * header.groupCount + TRAILER_RECORD_LENGTH);
      img.groupCrcs = trailer.subarray(0, 4 * header.groupCount);
      img.verified = new Uint8Array(header.groupCount);
      checkTrailer(header, img.groupCrcs, trailer.subarray(4 * header.groupCount));
      return img;
    } catch (e) {
      await fh.close();
      throw e;
    }
  }

  /** Copy [offsetInBlock, offsetInBlock + dst.length) of slot `slot` into dst, its group verified. */
  async readSlot(slot: number, dst: Buffer, offsetInBlock = 0): Promise<void> {
    const h = this.header;
    const g = Math.floor(slot / h.groupBlocks);
    const cached = this.groups.get(g);
    if (!cached && this.verified[g]) {
      // Checked already: a random reader pays one group read per group, not one per request.
      const part = await this.readAt(h.dataOffset + slot * h.blockSize + offsetInBlock, dst.length);
      part.copy(dst);
      return;
    }
    const data = cached ?? (await this.group(g));
    const at = (slot - g * h.groupBlocks) * h.blockSize + offsetInBlock;
    data.copy(dst, 0, at, at + dst.length);
  }

  async close(): Promise<void> {
    this.groups.clear();
    await this.fh.close();
  }

  private async group(g: number): Promise<Buffer> {
    const hit = this.groups.get(g);
    if (hit) {
      this.groups.delete(g); // most recently used last
      this.groups.set(g, hit);
      return hit;
    }
    const h = this.header;
    const first = g * h.groupBlocks;
    const count = Math.min(h.slotCount, first + h.groupBlocks) - first;
    const data = await this.readAt(h.dataOffset + first * h.blockSize, count * h.blockSize);
    if (crc32(data) !== this.groupCrcs.readUInt32BE(4 * g)) throw groupMismatch(h, g);
    this.verified[g] = 1;
    this.groups.set(g, data);
    if (this.groups.size > CACHED_GROUPS) this.groups.delete(this.groups.keys().next().value!);
    return data;
  }

  private async readAt(pos: number, length: number): Promise<Buffer> {
    const b = Buffer.allocUnsafe(length);
    let done = 0;
    while (done < length) {
      const { bytesRead } = await this.fh.read(b, done, length - done, pos + done);
      if (bytesRead === 0) throw corrupt('eof', `truncated: ${this.path} ends at byte ${pos + done}`, pos + done);
      done += bytesRead;
    }
    return b;
  }
}

/** Where a block of the chain's last snapshot is: image `image`'s slot `slot`. */
export interface Place {
  image: number;
  slot: number;
}

export class ImageChain {
  private constructor(
    readonly images: SeekableImage[],
    /** The last snapshot's data blocks, ascending, and where each one is. */
    readonly lbns: Float64Array,
    readonly places: Place[],
  ) {}

  /** Open a full image followed by deltas, each applying onto the one before; refused before any read of data. */
  static async open(paths: string[]): Promise<ImageChain> {
    if (paths.length === 0) throw invalid('no image given');
    const images: SeekableImage[] = [];
    try {
      for (const p of paths) images.push(await SeekableImage.open(p));
      checkLinks(images);
      const where = new Map<number, Place>();
      images.forEach((img, i) => {
        const t = img.tables;
        for (const lbn of t.zeros) where.delete(lbn);
        // A delta of a smaller disk drops the blocks past its end (as a restore into a disk does).
        if (i > 0) for (const lbn of [...where.keys()]) if (lbn >= img.header.blockCount) where.delete(lbn);
        for (let s = 0; s < t.lbns.length; s++) where.set(t.lbns[s]!, { image: i, slot: s });
      });
      const lbns = Float64Array.from(where.keys()).sort();
      return new ImageChain(images, lbns, Array.from(lbns, (l) => where.get(l)!));
    } catch (e) {
      await Promise.allSettled(images.map((i) => i.close()));
      throw e;
    }
  }

  /** The header of the last image: the snapshot the chain reads as. */
  get last(): ImageHeader {
    return this.images[this.images.length - 1]!.header;
  }

  get blockSize(): number {
    return this.last.blockSize;
  }

  get virtualSize(): number {
    return this.last.virtualSize;
  }

  /** Where lbn's data is, or undefined: a hole. */
  locate(lbn: number): Place | undefined {
    const i = this.indexFrom(lbn);
    return this.lbns[i] === lbn ? this.places[i] : undefined;
  }

  /** Read the chain's disk at pos into dst: bytes read (short at the end). Holes read as zeros. */
  async read(dst: Buffer, pos: number): Promise<number> {
    const bs = this.blockSize;
    const end = Math.min(pos + dst.length, this.virtualSize);
    let at = pos;
    while (at < end) {
      const lbn = Math.floor(at / bs);
      const within = at - lbn * bs;
      const n = Math.min(bs - within, end - at);
      const part = dst.subarray(at - pos, at - pos + n);
      const p = this.locate(lbn);
      if (p) await this.images[p.image]!.readSlot(p.slot, part, within);
      else part.fill(0);
      at += n;
    }
    return Math.max(0, end - pos);
  }

  /** lseek SEEK_DATA / SEEK_HOLE over the chain's blocks: the offset, or null past the end (ENXIO). */
  seek(pos: number, what: 'data' | 'hole'): number | null {
    const size = this.virtualSize;
    if (pos >= size) return null;
    const bs = this.blockSize;
    const lbn = Math.floor(pos / bs);
    let i = this.indexFrom(lbn);
    if (what === 'data') {
      if (i >= this.lbns.length) return null;
      return this.lbns[i] === lbn ? pos : this.lbns[i]! * bs;
    }
    if (this.lbns[i] !== lbn) return pos;
    while (i + 1 < this.lbns.length && this.lbns[i + 1] === this.lbns[i]! + 1) i++;
    return Math.min(size, (this.lbns[i]! + 1) * bs);
  }

  async close(): Promise<void> {
    await Promise.allSettled(this.images.map((i) => i.close()));
  }

  /** The index of the first data block at or after lbn (lbns.length: none). */
  private indexFrom(lbn: number): number {
    let lo = 0;
    let hi = this.lbns.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.lbns[mid]! < lbn) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }
}

function checkLinks(images: SeekableImage[]): void {
  const [first] = images;
  if (first!.header.kind !== 'full') {
    throw invalid(`${first!.path} is an incremental image (${first!.header.baseSnapName ?? first!.header.baseSnapId}..${first!.header.snapName}): a chain starts with a full image`);
  }
  for (let i = 1; i < images.length; i++) {
    const prev = images[i - 1]!;
    const img = images[i]!;
    const h = img.header;
    if (h.kind !== 'delta') throw invalid(`${img.path} is a full image: only the first image of a chain may be full`);
    if (h.baseSnapId !== prev.header.snapId) {
      throw invalid(`${img.path} applies onto snapshot ${h.baseSnapName ?? '?'} (${h.baseSnapId}), but ${prev.path} holds ${prev.header.snapName} (${prev.header.snapId}): a link is missing or out of order`);
    }
    if (h.blockSize !== prev.header.blockSize) throw invalid(`${img.path} has block size ${h.blockSize}, ${prev.path} ${prev.header.blockSize}`);
  }
}
