// writeFileDurably: the bytes of every chunk in order, whatever the chunk sizes and total length (a tail
// that is not a whole sector, an image shorter than the O_DIRECT probe), with O_DIRECT (ext4 takes it) and
// through the page cache (where a filesystem refuses it); a failing source rejects.

import { describe, it, expect } from 'vitest';
import { mkdtemp, readFile, rm, statfs, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { writeFileDurably } from '../../src/image/fileSink.js';
import { prng, randomBytes } from './helpers.js';

/** `data` in pieces of the given sizes, cycling through them; each piece a fresh view. */
async function* pieces(data: Buffer, sizes: number[]): AsyncGenerator<Buffer> {
  for (let off = 0, i = 0; off < data.length; i++) {
    const n = Math.min(sizes[i % sizes.length]!, data.length - off);
    yield data.subarray(off, off + n);
    off += n;
  }
}


describe('writeFileDurably', () => {
  for (const direct of [true, false]) {
    it(`writes the bytes exactly (${direct ? 'O_DIRECT' : 'through the page cache'})`, async () => {
      const dir = await mkdtemp(join(tmpdir(), 'vdfs-sink-'));
      const ext4 = (await statfs(dir)).type === 0xef53;
      try {
        const rnd = prng(9);
        const MiB = 1 << 20;
        for (const [size, sizes] of [[0, [1]], [100, [7]], [4096, [4096]], [4 * MiB, [MiB]], [4 * MiB + 17, [65536, 3, 1 << 20]], [9 * MiB + 5000, [4 * MiB + 1, 999]]] as [number, number[]][]) {
          const data = randomBytes(rnd, size);
          const f = join(dir, `f${size}`);
          await writeFile(f, Buffer.alloc(size + 12345, 0xee)); // an older, longer file is replaced
          const r = await writeFileDurably(f, pieces(data, sizes), { direct });
          expect(r.bytes).toBe(size);
          expect((await readFile(f)).equals(data), `size ${size}`).toBe(true);
          if (!direct || ext4) expect(r.direct).toBe(direct); // ext4 takes O_DIRECT: that path is the one tested
        }
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
    });
  }

  it('rejects with the source\'s error', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'vdfs-sink-'));
    try {
      async function* failing(): AsyncGenerator<Buffer> {
        yield Buffer.alloc(5 << 20, 1);
        throw new Error('source broke');
      }
      await expect(writeFileDurably(join(dir, 'x'), failing())).rejects.toThrow('source broke');
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
