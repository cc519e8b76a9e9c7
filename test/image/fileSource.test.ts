// fileChunks: the bytes of a file in order, whatever the chunk size and file size, with a yielded chunk
// intact until two more were asked for; and the parser takes it as an image source.

import { describe, it, expect } from 'vitest';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileChunks } from '../../src/image/fileSource.js';
import { verifyImage } from '../../src/image/index.js';
import { collect, makeFixture, prng, randomBytes } from './helpers.js';

describe('fileChunks', () => {
  it('yields the file exactly; each chunk stays intact while the next two are read', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'vdfs-fc-'));
    try {
      const rnd = prng(5);
      for (const size of [0, 1, 4095, 4096, 65536 * 3 + 17, 1 << 20]) {
        const data = randomBytes(rnd, size);
        const f = join(dir, `f${size}`);
        await writeFile(f, data);
        const held: Buffer[] = [];
        const copies: Buffer[] = [];
        let total = 0;
        for await (const c of fileChunks(f, { chunkBytes: 65536, ahead: 3 })) {
          held.push(c);
          copies.push(Buffer.from(c));
          // the two chunks before this one are still what they were when yielded
          for (let k = Math.max(0, held.length - 3); k < held.length; k++) expect(held[k]!.equals(copies[k]!)).toBe(true);
          total += c.length;
        }
        expect(total).toBe(size);
        expect(Buffer.concat(copies).equals(data)).toBe(true);
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('is an image source: an image file verifies through it', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'vdfs-fc-'));
    try {
      const f = makeFixture({ seed: 21, slots: 900, zeros: 10 });
      const img = join(dir, 'img');
      await writeFile(img, await collect(f.producer.stream()));
      const r = await verifyImage(fileChunks(img, { chunkBytes: 1 << 20 }));
      expect(r.slotCount).toBe(900);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
