/**
 * The readahead layer (src/store/readahead.ts) where the inner store does not stage a write at once:
 * write-behind waits for a free run first. A sequential reader meanwhile must not read a chunk over the
 * block being written (it would serve the old bytes once the write has landed). Regression test: the first
 * readahead layer dropped chunks when a write was issued but still read new ones over it until it was staged.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { DirectPoolFileStore } from '../../src/store/directPool.js';
import { directStack } from '../../src/store/bottoms.js';
import { cleanupDirs, prng, randomBytes, tempDir } from './helpers.js';

afterAll(cleanupDirs);

const BS = 64 * 1024;

describe('ReadaheadStore over write-behind', () => {
  it('a write waiting for room below keeps chunks from being read over its block', async () => {
    const direct = await DirectPoolFileStore.open(join(await tempDir(), 'pool.dat'), BS);
    if (!direct) throw new Error('these tests need O_DIRECT where they run');
    const store = await directStack(direct);
    const rnd = prng(31);
    try {
      for (let round = 0; round < 5; round++) {
        const old = Array.from({ length: 8 }, () => randomBytes(rnd, BS));
        for (let p = 0; p < 8; p++) store.writeSync!(p, old[p]!);
        // every write-behind run taken (and submitted: each is full), so the next write() waits for room
        for (let p = 0; store.behindRoom!(BS); p++) void store.stageBehind!(1000 + p, randomBytes(rnd, BS))();
        const fresh = randomBytes(rnd, BS);
        const written = store.write(5, fresh);
        const b = Buffer.alloc(BS);
        for (let p = 0; p < 4; p++) store.readSync!(p, b); // a sequential reader: reads ahead over block 5
        await written;
        await store.sync();
        const got = Buffer.alloc(BS);
        await store.read(5, got);
        expect(got.equals(fresh), `round ${round}: block 5 after its write`).toBe(true);
        for (let p = 0; p < 8; p++) {
          if (p === 5) continue;
          await store.read(p, got);
          expect(got.equals(old[p]!), `round ${round}: block ${p}`).toBe(true);
        }
      }
    } finally {
      await store.close();
    }
  });
});
