// Exact-length reads over an async stream of chunks of arbitrary size (1 byte .. many MiB).
// Invariants: `pos` is the absolute number of bytes consumed; read(n) returns exactly n bytes
// (a view of an input chunk when possible, else a fresh copy) or throws via onShort(pos);
// the returned Buffer is never reused by this class.

export type ImageSource = AsyncIterable<Uint8Array> | Iterable<Uint8Array>;

const EMPTY = Buffer.alloc(0);

function toBuffer(c: unknown): Buffer {
  if (Buffer.isBuffer(c)) return c;
  if (c instanceof Uint8Array) return Buffer.from(c.buffer, c.byteOffset, c.byteLength);
  throw new TypeError('image source must yield Buffers/Uint8Arrays');
}

export class ByteSource {
  pos = 0;
  private readonly it: AsyncIterator<Uint8Array> | Iterator<Uint8Array>;
  private cur: Buffer = EMPTY;
  private curPos = 0;
  private done = false;

  constructor(source: ImageSource, private readonly onShort: (pos: number, wanted: number) => Error) {
    const s = source as Partial<AsyncIterable<Uint8Array> & Iterable<Uint8Array>>;
    if (s[Symbol.asyncIterator]) this.it = s[Symbol.asyncIterator]!();
    else if (s[Symbol.iterator]) this.it = s[Symbol.iterator]!();
    else throw new TypeError('image source must be iterable');
  }

  /** Make the current chunk non-empty; false at end of input. */
  private async fill(): Promise<boolean> {
    while (this.curPos >= this.cur.length) {
      if (this.done) return false;
      const r = await this.it.next();
      if (r.done) {
        this.done = true;
        this.cur = EMPTY;
        this.curPos = 0;
        return false;
      }
      this.cur = toBuffer(r.value);
      this.curPos = 0;
    }
    return true;
  }

  /** Exactly n bytes, or throw onShort(position of the first missing byte). */
  async read(n: number): Promise<Buffer> {
    if (n === 0) return EMPTY;
    if (!(await this.fill())) throw this.onShort(this.pos, n);
    if (this.cur.length - this.curPos >= n) {
      const b = this.cur.subarray(this.curPos, this.curPos + n);
      this.curPos += n;
      this.pos += n;
      return b;
    }
    const out = Buffer.allocUnsafe(n);
    let got = 0;
    while (got < n) {
      if (!(await this.fill())) throw this.onShort(this.pos, n - got);
      const take = Math.min(n - got, this.cur.length - this.curPos);
      this.cur.copy(out, got, this.curPos, this.curPos + take);
      this.curPos += take;
      this.pos += take;
      got += take;
    }
    return out;
  }

  /** True if no bytes remain (consumes empty chunks only). */
  async atEnd(): Promise<boolean> {
    return !(await this.fill());
  }

  /** Stop the underlying iterator early (e.g. a consumer broke out). */
  async close(): Promise<void> {
    if (!this.done) {
      this.done = true;
      await this.it.return?.();
    }
  }
}
