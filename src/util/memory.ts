/**
 * Page-aligned memory for O_DIRECT I/O. Node cannot ask for an address, and the memory of a large Buffer comes
 * from malloc, which on glibc starts 16 bytes into a page: O_DIRECT accepts it once shifted to a sector
 * boundary (directIo.ts probes for that), but its transfers then start mid-page, and on these VMs such 1 MiB
 * writes ran at 70–230 MB/s where the same writes from page-aligned memory ran at 1.0–1.9 GB/s (and fio's,
 * page-aligned, at 1.3–1.5 GB/s), in alternation, minutes apart. A WebAssembly.Memory's buffer is mapped by
 * V8 on page boundaries: its start is page-aligned by construction. It cannot be freed explicitly (the garbage
 * collector unmaps it), so it is for long-lived arenas. Returns null where V8 refuses the reservation
 * (address-space limits): callers fall back to probed malloc memory.
 */
const WASM_PAGE = 64 * 1024;

/** The one part of the WebAssembly global used here (the project compiles without the DOM/wasm typings). */
const wasm = (globalThis as unknown as { WebAssembly?: { Memory: new (d: { initial: number; maximum: number }) => { buffer: ArrayBuffer } } }).WebAssembly;

export function pageAlignedMemory(bytes: number): Buffer | null {
  if (!wasm) return null;
  try {
    const pages = Math.max(1, Math.ceil(bytes / WASM_PAGE));
    return Buffer.from(new wasm.Memory({ initial: pages, maximum: pages }).buffer, 0, bytes);
  } catch {
    return null;
  }
}

/**
 * `bytes` of memory whose start an O_DIRECT transfer accepts: page-aligned memory first, else malloc memory
 * from the first 16-byte step below `align` that `probe` accepts. `probe` gets the `probeBytes` at a candidate
 * start and rejects with EINVAL when O_DIRECT refuses it; any other failure gives null, as does no start at all.
 */
export async function directMemory(bytes: number, probeBytes: number, align: number, probe: (at: Buffer) => Promise<unknown>): Promise<Buffer | null> {
  /** The memory from `off` when the probe takes it; undefined: refused (EINVAL), try the next. */
  const attempt = async (mem: Buffer, off: number): Promise<Buffer | null | undefined> => {
    try {
      await probe(mem.subarray(off, off + probeBytes));
      return mem.subarray(off, off + bytes);
    } catch (e) {
      return (e as NodeJS.ErrnoException).code === 'EINVAL' ? undefined : null;
    }
  };
  const span = Math.max(bytes, probeBytes);
  const paged = pageAlignedMemory(span);
  if (paged) {
    const got = await attempt(paged, 0);
    if (got !== undefined) return got;
  }
  const raw = Buffer.allocUnsafeSlow(span + align);
  for (let off = 0; off < align; off += 16) {
    const got = await attempt(raw, off);
    if (got !== undefined) return got;
  }
  return null;
}
