/**
 * Physical block allocation for one block size: a bitmap of used pbns, rebuilt at open from the tables
 * (the tables are the only persistent truth, so a crash can never leak a block: an unreferenced pbn is
 * free by definition). Allocation prefers the lowest free pbn at or after a moving cursor, so sequential
 * writes land sequentially in the pool file. Frees become reusable only after the table change that
 * dropped the reference has committed (the caller calls free() after its batch).
 * Memory: one bit per pbn up to the high-water mark.
 */
export class Allocator {
  private bits = new Uint8Array(1024);
  private cursor = 0;
  /** One past the highest pbn ever marked used. */
  highWater = 0;
  used = 0;

  constructor(readonly blockSize: number) {}

  isUsed(pbn: number): boolean {
    const byte = pbn >>> 3;
    return byte < this.bits.length && ((this.bits[byte] ?? 0) & (1 << (pbn & 7))) !== 0;
  }

  /** Mark a pbn used (open-time scan). Returns false if it already was (a double reference). */
  mark(pbn: number): boolean {
    this.ensure(pbn);
    const byte = pbn >>> 3;
    const bit = 1 << (pbn & 7);
    const cur = this.bits[byte] ?? 0;
    if (cur & bit) return false;
    this.bits[byte] = cur | bit;
    this.used++;
    if (pbn >= this.highWater) this.highWater = pbn + 1;
    return true;
  }

  allocate(): number {
    // Scan from the cursor for a free bit below the high-water mark, else extend.
    const limitByte = this.highWater >>> 3;
    let byte = this.cursor >>> 3;
    while (byte <= limitByte && byte < this.bits.length) {
      const v = this.bits[byte] ?? 0;
      if (v !== 0xff) {
        for (let b = 0; b < 8; b++) {
          const pbn = byte * 8 + b;
          if (pbn >= this.highWater) break;
          if (!(v & (1 << b))) {
            this.mark(pbn);
            this.cursor = pbn + 1;
            return pbn;
          }
        }
      }
      byte++;
    }
    const pbn = this.highWater;
    this.mark(pbn);
    this.cursor = pbn + 1;
    return pbn;
  }

  /** One past the highest pbn in use now (0 when none is): what a pool file needs to keep. */
  usedEnd(): number {
    let byte = Math.min(this.bits.length, (this.highWater + 7) >>> 3) - 1;
    while (byte >= 0 && this.bits[byte] === 0) byte--;
    if (byte < 0) return 0;
    const v = this.bits[byte]!;
    return byte * 8 + 32 - Math.clz32(v);
  }

  free(pbn: number): void {
    const byte = pbn >>> 3;
    const bit = 1 << (pbn & 7);
    const cur = this.bits[byte] ?? 0;
    if (!(cur & bit)) throw new Error(`double free of pbn ${pbn}`);
    this.bits[byte] = cur & ~bit;
    this.used--;
    if (pbn < this.cursor) this.cursor = pbn;
  }

  private ensure(pbn: number): void {
    const need = (pbn >>> 3) + 1;
    if (need <= this.bits.length) return;
    let size = this.bits.length;
    while (size < need) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.bits);
    this.bits = next;
  }
}
