/** Zero detection without allocating: compare 8 bytes at a time. */
export function isZero(buf: Buffer): boolean {
  const n = buf.length;
  let i = 0;
  const aligned = n - (n % 8);
  // BigUint64 reads are slow; readDoubleLE of zero bytes is 0, but -0 and NaN payloads exist, so use two u32s.
  for (; i < aligned; i += 8) {
    if (buf.readUInt32LE(i) !== 0 || buf.readUInt32LE(i + 4) !== 0) return false;
  }
  for (; i < n; i++) if (buf[i] !== 0) return false;
  return true;
}
