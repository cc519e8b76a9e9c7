/**
 * Pure address math: split a byte range of a disk into per-block pieces. A piece covers
 * [offsetInBlock, offsetInBlock+length) of logical block `lbn` and [bufOffset, bufOffset+length) of the
 * caller's buffer. Pieces come in ascending lbn order; only the first (head) and last (tail) can be partial.
 */
export interface Piece {
  lbn: number;
  offsetInBlock: number;
  length: number;
  bufOffset: number;
  whole: boolean;
}

export function splitRange(offset: number, length: number, blockSize: number): Piece[] {
  const pieces: Piece[] = [];
  let pos = offset;
  let bufOffset = 0;
  const end = offset + length;
  while (pos < end) {
    const lbn = Math.floor(pos / blockSize);
    const offsetInBlock = pos - lbn * blockSize;
    const len = Math.min(blockSize - offsetInBlock, end - pos);
    pieces.push({ lbn, offsetInBlock, length: len, bufOffset, whole: len === blockSize });
    pos += len;
    bufOffset += len;
  }
  return pieces;
}

export function blocksFor(size: number, blockSize: number): number {
  return Math.ceil(size / blockSize);
}
