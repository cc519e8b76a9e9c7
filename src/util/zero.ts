/** Zero detection without allocating per call: memcmp against a shared zero buffer. */
const ZEROS = Buffer.alloc(1024 * 1024);

export function isZero(buf: Buffer): boolean {
  for (let off = 0; off < buf.length; off += ZEROS.length) {
    const n = Math.min(ZEROS.length, buf.length - off);
    if (buf.compare(ZEROS, 0, n, off, off + n) !== 0) return false;
  }
  return true;
}
