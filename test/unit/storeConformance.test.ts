/**
 * One conformance suite for the BlockStore contract (src/store/blockStore.ts), run by every bottom and
 * every layer over every bottom: whole and sub-range reads and writes, readRun/readParallel, the synchronous
 * methods and write-behind where offered (with copyBehind's order rules), sync/syncNow, discard, trim, and a
 * close and reopen that keeps synced data. A method a store does not offer is skipped, not faked; a layer
 * must offer every optional method its inner store offers.
 */
import { afterAll, describe, expect, it } from 'vitest';
import type { BlockStore } from '../../src/store/blockStore.js';
import { OPTIONAL, storeSubjects, type Subject } from './storeSubjects.js';
import { cleanupDirs, prng, randomBytes, tempDir } from './helpers.js';

afterAll(cleanupDirs);

const BS = 16 * 1024;

/** Write behind as the FUSE fast path does: stage, clobber the caller's buffer at once, submit. */
function writeBehind(store: BlockStore, pbn: number, data: Buffer, off = 0): Promise<void> {
  const submit = store.stageBehind!(pbn, data, off);
  data.fill(0xee);
  return submit();
}

async function readBlock(store: BlockStore, pbn: number): Promise<Buffer> {
  const b = Buffer.alloc(BS, 0xcc);
  await store.read(pbn, b);
  return b;
}

async function withStore(subject: Subject, fn: (store: BlockStore, dir: string) => Promise<void>): Promise<void> {
  const dir = await tempDir();
  const s = await subject.open(dir, BS);
  try {
    await fn(s.store, dir);
  } finally {
    await s.close();
  }
}

const subjects = await storeSubjects(await tempDir());

describe.each(subjects)('$name', (subject) => {
  it.skipIf(subject.skip)('writes and reads whole blocks and sub-ranges; a block never written reads as zeros', () =>
    withStore(subject, async (store) => {
      const rnd = prng(1);
      const model = Array.from({ length: 6 }, () => randomBytes(rnd, BS));
      for (let pbn = 0; pbn < 6; pbn++) await store.write(pbn, Buffer.from(model[pbn]!));
      // sub-range writes: sector-aligned, odd, and the last bytes of a block
      for (const [pbn, off, len] of [[1, 4096, 8192], [2, 123, 1000], [3, BS - 7, 7], [4, 0, 1]] as const) {
        const data = randomBytes(rnd, len);
        await store.write(pbn, data, off);
        data.copy(model[pbn]!, off);
      }
      for (let pbn = 0; pbn < 6; pbn++) expect((await readBlock(store, pbn)).equals(model[pbn]!), `block ${pbn}`).toBe(true);
      for (const [pbn, off, len] of [[1, 4000, 300], [2, 0, 512], [3, BS - 1, 1], [5, 8192, 8192]] as const) {
        const part = Buffer.alloc(len);
        await store.read(pbn, part, off);
        expect(part.equals(model[pbn]!.subarray(off, off + len)), `block ${pbn} at ${off}+${len}`).toBe(true);
      }
      expect((await readBlock(store, 40)).equals(Buffer.alloc(BS))).toBe(true);
    }),
  );

  it.skipIf(subject.skip || !subject.offers.has('readRun'))('readRun and readParallel read what was written (aligned memory or not)', () =>
    withStore(subject, async (store) => {
      const rnd = prng(2);
      const n = 5;
      const model = randomBytes(rnd, n * BS);
      for (let i = 0; i < n; i++) await store.write(10 + i, model.subarray(i * BS, (i + 1) * BS));
      const plain = Buffer.alloc(n * BS);
      await store.readRun!(10, n, plain);
      expect(plain.equals(model)).toBe(true);
      if (store.allocAligned) {
        const mem = await store.allocAligned(n * BS);
        await store.readRun!(10, n, mem);
        expect(mem.equals(model)).toBe(true);
      }
      const one = Buffer.alloc(BS);
      await store.readParallel!(12, one);
      expect(one.equals(model.subarray(2 * BS, 3 * BS))).toBe(true);
      // a run over blocks with a write still in flight reads the write
      const fresh = randomBytes(rnd, BS);
      const w = store.write(11, fresh);
      await store.readRun!(10, n, plain);
      await w;
      fresh.copy(model, BS);
      expect(plain.equals(model)).toBe(true);
    }),
  );

  it.skipIf(subject.skip || !subject.offers.has('readSync'))('synchronous reads and writes agree with the asynchronous ones', () =>
    withStore(subject, async (store) => {
      const rnd = prng(3);
      const model = Array.from({ length: 4 }, () => randomBytes(rnd, BS));
      for (let pbn = 0; pbn < 4; pbn++) {
        if (store.writeSync) store.writeSync(pbn, model[pbn]!);
        else await store.write(pbn, model[pbn]!);
      }
      const b = Buffer.alloc(BS);
      for (let pbn = 0; pbn < 4; pbn++) {
        expect(store.busy?.(pbn) ?? false).toBe(false);
        store.readSync!(pbn, b);
        expect(b.equals(model[pbn]!), `readSync ${pbn}`).toBe(true);
      }
      if (store.writeSync) {
        const d = randomBytes(rnd, 777);
        store.writeSync(2, d, 1001);
        d.copy(model[2]!, 1001);
        expect((await readBlock(store, 2)).equals(model[2]!)).toBe(true);
      }
      const part = Buffer.alloc(500);
      store.readSync!(2, part, 900);
      expect(part.equals(model[2]!.subarray(900, 1400))).toBe(true);
    }),
  );

  it.skipIf(subject.skip || !subject.offers.has('stageBehind'))('write-behind: staged writes land in issue order, are busy until written, and reads wait for them', () =>
    withStore(subject, async (store) => {
      const rnd = prng(4);
      const model = Array.from({ length: 4 }, () => Buffer.alloc(BS));
      const pending: Promise<void>[] = [];
      expect(store.behindRoom!(BS)).toBe(true);
      for (let i = 0; i < 120; i++) {
        const pbn = Math.floor(rnd() * 4);
        const whole = rnd() < 0.4;
        const off = whole ? 0 : Math.floor(rnd() * BS);
        const data = randomBytes(rnd, whole ? BS : Math.min(BS - off, 1 + Math.floor(rnd() * BS)));
        data.copy(model[pbn]!, off);
        if (rnd() < 0.7 && store.behindRoom!(data.length)) {
          pending.push(writeBehind(store, pbn, data, off)); // the caller's buffer is clobbered at once
          // busy until written, unless readSync already returns the write (a layer that keeps it in memory)
          if (!store.busy!(pbn)) {
            const b = Buffer.alloc(BS);
            store.readSync!(pbn, b);
            expect(b.equals(model[pbn]!), `readSync(${pbn}) while not busy after a staged write`).toBe(true);
          }
        } else pending.push(store.write(pbn, data, off));
        if (rnd() < 0.15) expect((await readBlock(store, pbn)).equals(model[pbn]!), `read of ${pbn} after write ${i}`).toBe(true);
      }
      await store.sync();
      await Promise.all(pending);
      // (busy() may still be true here for a readahead read the reads above started: read() waits for it)
      for (let pbn = 0; pbn < 4; pbn++) expect((await readBlock(store, pbn)).equals(model[pbn]!), `block ${pbn}`).toBe(true);
    }),
  );

  it.skipIf(subject.skip || !subject.offers.has('copyBehind'))('copyBehind copies the source after its earlier writes, before every later write to the target', () =>
    withStore(subject, async (store) => {
      const rnd = prng(5);
      expect(store.copyRoom!()).toBe(true);
      const a = randomBytes(rnd, BS);
      await store.write(1, a);
      await store.write(2, randomBytes(rnd, BS)); // the target's stale bytes: all replaced
      const b = randomBytes(rnd, 8192);
      const bDone = writeBehind(store, 1, Buffer.from(b), 4096); // staged before the copy: the copy sees it
      b.copy(a, 4096);
      const copied = store.copyBehind!(1, 2);
      expect(store.busy!(2)).toBe(true);
      const want = Buffer.from(a);
      const c = randomBytes(rnd, 4096);
      const cDone = writeBehind(store, 2, Buffer.from(c), 8192);
      c.copy(want, 8192);
      const d = randomBytes(rnd, 100);
      const dDone = writeBehind(store, 2, Buffer.from(d), 3);
      d.copy(want, 3);
      expect((await readBlock(store, 2)).equals(want), 'a read of the target waits for the copy and the writes after it').toBe(true);
      await Promise.all([bDone, copied, cDone, dDone]);
      expect(store.busy!(2)).toBe(false);
      expect((await readBlock(store, 2)).equals(want)).toBe(true);
      expect((await readBlock(store, 1)).equals(a)).toBe(true);
    }),
  );

  it.skipIf(subject.skip || !subject.offers.has('copyBehind'))('copyBehind with a patch writes the patch over the copy, after the source\'s earlier writes, before the target\'s later ones', () =>
    withStore(subject, async (store) => {
      const rnd = prng(6);
      const a = randomBytes(rnd, BS);
      await store.write(1, a);
      await store.write(3, randomBytes(rnd, BS)); // the target's stale bytes: all replaced
      const b = randomBytes(rnd, 4096);
      const bDone = writeBehind(store, 1, Buffer.from(b), 0); // staged to the source before the copy: copied
      b.copy(a, 0);
      const want = Buffer.from(a);
      const patch = randomBytes(rnd, 8192);
      patch.copy(want, 4096);
      const mine = Buffer.from(patch);
      const copied = store.copyBehind!(1, 3, { data: mine, offsetInBlock: 4096 });
      mine.fill(0xee); // the store took the patch's bytes when called
      expect(store.busy!(3)).toBe(true);
      const c = randomBytes(rnd, 4096);
      const cDone = writeBehind(store, 3, Buffer.from(c), 8192); // over part of the patch: lands after it
      c.copy(want, 8192);
      await Promise.all([bDone, copied, cDone]);
      expect((await readBlock(store, 3)).equals(want), 'the copy, the patch over it, the later write over both').toBe(true);
      expect((await readBlock(store, 1)).equals(a), 'the source is unchanged').toBe(true);
    }),
  );

  it.skipIf(subject.skip)('sync makes staged and written data settle; syncNow flushes at once or declines while a write is in flight', () =>
    withStore(subject, async (store) => {
      const rnd = prng(6);
      const a = randomBytes(rnd, BS);
      let landed = false;
      const w = store.write(0, a).then(() => {
        landed = true;
      });
      if (store.syncNow?.()) {
        // it may flush only with nothing in flight: the write must have settled by then
        await new Promise((r) => setImmediate(r));
        expect(landed, 'syncNow flushed while a write() was in flight').toBe(true);
      }
      await store.sync();
      await w;
      expect((await readBlock(store, 0)).equals(a)).toBe(true);
      if (!store.stageBehind) return;
      const b = randomBytes(rnd, BS / 2);
      const staged = writeBehind(store, 3, Buffer.from(b), BS / 4);
      if (!store.syncNow?.()) await store.sync();
      expect(store.busy!(3), 'busy after sync').toBe(false);
      await staged; // settled as written
      const got = Buffer.alloc(b.length);
      store.readSync!(3, got, BS / 4);
      expect(got.equals(b)).toBe(true);
    }),
  );

  it.skipIf(subject.skip || !subject.offers.has('discard'))('a write issued right after a discard is not undone by it', () =>
    withStore(subject, async (store) => {
      const rnd = prng(7);
      for (let round = 0; round < 10; round++) {
        const pbn = round % 3;
        await store.write(pbn, randomBytes(rnd, BS));
        const fresh = randomBytes(rnd, BS);
        const gone = store.discard!(pbn);
        const written = round % 2 && store.stageBehind ? writeBehind(store, pbn, Buffer.from(fresh)) : store.write(pbn, fresh);
        await Promise.all([gone, written]);
        expect((await readBlock(store, pbn)).equals(fresh), `round ${round}`).toBe(true);
      }
    }),
  );

  it.skipIf(subject.skip || !subject.offers.has('trim'))('trim keeps the blocks before the cut; blocks past it read as zeros and can be written again', () =>
    withStore(subject, async (store) => {
      const rnd = prng(8);
      const model = Array.from({ length: 8 }, () => randomBytes(rnd, BS));
      for (let pbn = 0; pbn < 8; pbn++) await store.write(pbn, model[pbn]!);
      await store.trim!(4);
      for (let pbn = 0; pbn < 4; pbn++) expect((await readBlock(store, pbn)).equals(model[pbn]!), `block ${pbn}`).toBe(true);
      for (let pbn = 4; pbn < 8; pbn++) expect((await readBlock(store, pbn)).equals(Buffer.alloc(BS)), `trimmed block ${pbn}`).toBe(true);
      await store.write(6, model[6]!);
      expect((await readBlock(store, 6)).equals(model[6]!)).toBe(true);
    }),
  );

  it.skipIf(subject.skip)('close and reopen keep synced data', async () => {
    const dir = await tempDir();
    const rnd = prng(9);
    const model = Array.from({ length: 6 }, () => randomBytes(rnd, BS));
    let s = await subject.open(dir, BS);
    try {
      for (let pbn = 0; pbn < 6; pbn++) {
        const st = s.store;
        if (pbn % 3 === 1 && st.stageBehind && st.behindRoom!(BS)) void writeBehind(st, pbn, Buffer.from(model[pbn]!));
        else if (pbn % 3 === 2 && st.writeSync) st.writeSync(pbn, model[pbn]!);
        else await st.write(pbn, model[pbn]!);
      }
      await s.store.sync();
    } finally {
      await s.close();
    }
    s = await subject.open(dir, BS);
    try {
      for (let pbn = 0; pbn < 6; pbn++) expect((await readBlock(s.store, pbn)).equals(model[pbn]!), `block ${pbn} after reopen`).toBe(true);
    } finally {
      await s.close();
    }
  });

  it.skipIf(subject.skip || !subject.inner)('a layer offers every optional method its inner store offers', () => {
    for (const m of OPTIONAL) if (subject.inner!.has(m)) expect(subject.offers.has(m), `${subject.name} lacks ${m}`).toBe(true);
  });
});
