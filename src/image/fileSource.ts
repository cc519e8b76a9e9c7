// Reading an image file fast: large reads, several in flight, into a ring of buffers that are reused (fresh
// memory is dear on a VM that hands freed pages back to its host: a stream allocating a new 1 MiB Buffer per
// read spent more time in page faults than in reading), with O_DIRECT where the file's filesystem allows it
// (a backup image read once need not fill the page cache). Invariant: a yielded chunk stays valid until the
// consumer has asked for two more chunks (the image parser hands out views of a chunk only while it is
// the current one, and consumers copy what they keep: reader.ts, ImageHandler.block).

import { constants, read as readCb } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { directMemory } from '../util/memory.js';

const SECTOR = 4096;
const CHUNK = 4 << 20;
const AHEAD = 4;

function readAt(fd: number, buf: Buffer, pos: number): Promise<number> {
  return new Promise((resolve, reject) => {
    let done = 0;
    const step = (): void => {
      readCb(fd, buf, done, buf.length - done, pos + done, (err, n) => {
        if (err) return reject(err);
        done += n;
        if (n === 0 || done >= buf.length) return resolve(done);
        if (done % SECTOR !== 0) return resolve(done); // O_DIRECT: a short read that is not aligned is the end
        step();
      });
    };
    step();
  });
}

/** A buffer of `bytes` whose start O_DIRECT reads of fd accept, or null (util/memory.ts directMemory). */
function alignedFor(fd: number, bytes: number): Promise<Buffer | null> {
  return directMemory(bytes, SECTOR, SECTOR, (at) => readAt(fd, at, 0));
}

/** The bytes of a regular file in chunks (see the module comment for how long a chunk stays valid). */
export async function* fileChunks(path: string, opts: { chunkBytes?: number; ahead?: number } = {}): AsyncGenerator<Buffer> {
  const chunk = opts.chunkBytes ?? CHUNK;
  const ahead = Math.max(1, opts.ahead ?? AHEAD);
  const ring = ahead + 3;
  let fh: FileHandle | undefined;
  let arena: Buffer | null = null;
  const reads = new Map<number, Promise<number>>();
  try {
    fh = await open(path, constants.O_RDONLY | constants.O_DIRECT).catch(() => undefined);
    if (fh) arena = await alignedFor(fh.fd, chunk * ring);
    if (!arena) {
      await fh?.close();
      fh = await open(path, 'r');
      arena = Buffer.allocUnsafeSlow(chunk * ring);
    }
    const fd = fh!.fd;
    const size = (await fh!.stat()).size;
    const count = Math.ceil(size / chunk);
    const bufs = Array.from({ length: ring }, (_, i) => arena!.subarray(i * chunk, (i + 1) * chunk));
    const start = (i: number): void => {
      if (i >= count || reads.has(i)) return;
      const p = readAt(fd, bufs[i % ring]!, i * chunk);
      p.catch(() => undefined);
      reads.set(i, p);
    };
    for (let i = 0; i < count; i++) {
      for (let j = i; j <= i + ahead; j++) start(j); // chunk j reuses the buffer of chunk j - ring <= i - 3
      const n = await reads.get(i)!;
      reads.delete(i);
      const want = Math.min(chunk, size - i * chunk);
      if (n < want) throw new Error(`${path}: short read at byte ${i * chunk + n} (file changed while read?)`);
      yield bufs[i % ring]!.subarray(0, want);
    }
  } finally {
    await Promise.allSettled(reads.values());
    await fh?.close();
  }
}
