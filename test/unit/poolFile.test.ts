/**
 * The pool-file stores (O_DIRECT: DirectPoolFileStore with the write-behind layer over it, and with
 * readahead over that as bottoms.ts assembles it; page cache: PoolFileStore), each through the same tests: the synchronous and asynchronous I/O agree, sequential reads (which start readahead on the thread
 * pool) never return data older than the last write, whether the readahead was in flight or done, and
 * written-behind writes land in issue order and survive the caller reusing its buffer at once.
 */
import { describe, it, expect, afterAll } from 'vitest';
import { join } from 'node:path';
import { PoolFileStore } from '../../src/store/poolFile.js';
import { DirectPoolFileStore } from '../../src/store/directPool.js';
import { WriteBehindStore } from '../../src/store/writeBehind.js';
import { directStack } from '../../src/store/bottoms.js';
import type { BlockStore } from '../../src/store/blockStore.js';
import { prng, randomBytes, tempDir, cleanupDirs } from './helpers.js';

afterAll(cleanupDirs);

const BS = 64 * 1024;
const BLOCKS = 256; // 16 MiB: more than the readahead window

/** Let the thread pool finish the readahead reads in flight. */
const settle = () => new Promise((r) => setTimeout(r, 50));

/** A pool-file store with the methods these tests use (all three kinds offer them). */
type Store = BlockStore & Required<Pick<BlockStore, 'readSync' | 'writeSync' | 'readParallel' | 'stageBehind' | 'busy' | 'behindRoom'>>;

async function openDirect(path: string): Promise<DirectPoolFileStore> {
  const s = await DirectPoolFileStore.open(path, BS);
  if (!s) throw new Error(`O_DIRECT is not supported where the tests run (${path}): these tests need it`);
  return s;
}

const KINDS: { name: string; open(path: string): Promise<Store> }[] = [
  { name: 'PoolFileStore (page cache)', open: (path) => PoolFileStore.open(path, BS) },
  { name: 'WriteBehindStore over DirectPoolFileStore (O_DIRECT)', open: async (path) => WriteBehindStore.over(await openDirect(path)) },
  { name: 'directStack: readahead over write-behind over O_DIRECT (as bottoms.ts assembles it)', open: async (path) => (await directStack(await openDirect(path))) as Store },
];

/** The pool file's handle under the store (and its layers): closing it makes the next write fail. */
function fileOf(store: BlockStore): { close(): Promise<void> } {
  const s = store as unknown as { fh?: { close(): Promise<void> }; inner: BlockStore };
  return s.fh ?? fileOf(s.inner);
}

/** Write behind as the FUSE fast path does: stage (the caller's buffer is then clobbered), submit later. */
function writeBehind(store: Store, pbn: number, data: Buffer, off = 0): Promise<void> {
  const submit = store.stageBehind(pbn, data, off);
  data.fill(0xee);
  return submit();
}

describe.each(KINDS)('$name', ({ open }) => {
async function filledStore(seed: number): Promise<{ store: Store; model: Buffer[] }> {
  const store = await open(join(await tempDir(), 'pool.dat'));
  const rnd = prng(seed);
  const model: Buffer[] = [];
  for (let pbn = 0; pbn < BLOCKS; pbn++) {
    model.push(randomBytes(rnd, BS));
    store.writeSync(pbn, model[pbn]!);
  }
  return { store, model };
}

function readSeq(store: Store, from: number, to: number, model: Buffer[]): void {
  const b = Buffer.alloc(BS);
  for (let pbn = from; pbn < to; pbn++) {
    store.readSync(pbn, b);
    if (!b.equals(model[pbn]!)) throw new Error(`block ${pbn} differs`);
  }
}

describe('with readahead', () => {
  it('a sequential read sees every write made while readahead was in flight or done', async () => {
    const { store, model } = await filledStore(1);
    const rnd = prng(2);
    try {
      for (let round = 0; round < 20; round++) {
        const start = Math.floor(rnd() * 64);
        readSeq(store, start, start + 8, model); // starts the readahead ahead of block start+8
        if (round % 2) await settle(); // chunks arrived (else: still in flight)
        // overwrite whole and partial blocks ahead of the reader, inside the readahead window
        for (let i = 0; i < 4; i++) {
          const pbn = start + 8 + Math.floor(rnd() * 100);
          const off = rnd() < 0.5 ? 0 : Math.floor(rnd() * BS);
          const data = randomBytes(rnd, Math.min(BS - off, 1 + Math.floor(rnd() * BS)));
          store.writeSync(pbn, data, off);
          data.copy(model[pbn]!, off);
        }
        await settle();
        readSeq(store, start + 8, start + 120, model);
      }
      // partial reads at odd offsets
      readSeq(store, 0, 4, model);
      await settle();
      const part = Buffer.alloc(1000);
      store.readSync(5, part, 12345);
      expect(part.equals(model[5]!.subarray(12345, 13345))).toBe(true);
    } finally {
      await store.close();
    }
  });

  it('async read, readParallel and readSync agree after writes', async () => {
    const { store, model } = await filledStore(3);
    try {
      readSeq(store, 0, 16, model);
      const fresh = randomBytes(prng(4), BS);
      store.writeSync(20, fresh);
      model[20] = fresh;
      const a = Buffer.alloc(BS);
      const b = Buffer.alloc(BS);
      await store.read(20, a);
      await store.readParallel(20, b);
      expect(a.equals(fresh)).toBe(true);
      expect(b.equals(fresh)).toBe(true);
      readSeq(store, 16, 64, model);
    } finally {
      await store.close();
    }
  });

  it('write-behind keeps every write to a pbn in issue order, and reads wait for it', async () => {
    const store = await open(join(await tempDir(), 'pool.dat'));
    const rnd = prng(5);
    try {
      const model = Array.from({ length: 8 }, () => Buffer.alloc(BS));
      const pending: Promise<void>[] = [];
      for (let i = 0; i < 400; i++) {
        const pbn = Math.floor(rnd() * 8);
        // whole blocks (written around the page cache where O_DIRECT works) mixed with partial ones
        const whole = rnd() < 0.4;
        const off = whole || rnd() < 0.3 ? 0 : Math.floor(rnd() * BS);
        const data = randomBytes(rnd, whole ? BS : Math.min(BS - off, 1 + Math.floor(rnd() * BS)));
        data.copy(model[pbn]!, off);
        if (rnd() < 0.7 && store.behindRoom(data.length)) pending.push(writeBehind(store, pbn, data, off));
        else pending.push(store.write(pbn, data, off));
        if (rnd() < 0.1) {
          const b = Buffer.alloc(BS);
          await store.read(pbn, b); // waits for the chain of pbn
          expect(b.equals(model[pbn]!), `read of ${pbn} after write ${i}`).toBe(true);
        }
      }
      expect([...Array(8).keys()].some((pbn) => store.busy(pbn))).toBe(true);
      await store.sync();
      expect([...Array(8).keys()].some((pbn) => store.busy(pbn))).toBe(false);
      await Promise.all(pending);
      for (let pbn = 0; pbn < 8; pbn++) {
        const b = Buffer.alloc(BS);
        store.readSync(pbn, b);
        expect(b.equals(model[pbn]!), `block ${pbn}`).toBe(true);
      }
    } finally {
      await store.close();
    }
  });

  it('a write staged inside a readahead chunk (ready or in flight) is what every later read returns', async () => {
    const { store, model } = await filledStore(7);
    const rnd = prng(8);
    try {
      for (let round = 0; round < 30; round++) {
        const start = Math.floor(rnd() * 32);
        readSeq(store, start, start + 4, model); // readahead chunks ahead of start+4
        if (round % 2) await settle();
        const pbn = start + 4 + Math.floor(rnd() * 60);
        const off = rnd() < 0.5 ? 0 : 512 * Math.floor(rnd() * 64);
        const data = randomBytes(rnd, Math.min(BS - off, 512 * (1 + Math.floor(rnd() * 128))));
        data.copy(model[pbn]!, off);
        const written = writeBehind(store, pbn, data, off);
        const b = Buffer.alloc(BS);
        await store.read(pbn, b); // waits for the staged write
        expect(b.equals(model[pbn]!), `round ${round}: read of ${pbn}`).toBe(true);
        await written;
        readSeq(store, start + 4, start + 70, model);
      }
    } finally {
      await store.close();
    }
  });

  it('back-to-back write-behinds of one block: the last one issued is what the block holds', async () => {
    const store = await open(join(await tempDir(), 'pool.dat'));
    try {
      for (let round = 0; round < 50; round++) {
        const ws: Promise<void>[] = [];
        // a big write, then small ones: without ordering the small last one tends to finish first
        for (let i = 0; i < 8; i++) ws.push(writeBehind(store, 0, Buffer.alloc(i === 7 ? 512 : BS, i + round * 8 + 1)));
        await Promise.all(ws);
        const b = Buffer.alloc(512);
        store.readSync(0, b);
        expect(b.equals(Buffer.alloc(512, 7 + round * 8 + 1)), `round ${round}`).toBe(true);
      }
    } finally {
      await store.close();
    }
  });

  it('a failed write-behind fails every later sync and stops taking writes', async () => {
    const store = await open(join(await tempDir(), 'pool.dat'));
    try {
      expect(store.behindRoom(BS)).toBe(true);
      await writeBehind(store, 0, Buffer.alloc(BS, 1));
      // Take the descriptor away underneath: the next pwrite on the thread pool fails (EBADF).
      await fileOf(store).close();
      await expect(writeBehind(store, 1, Buffer.alloc(BS / 2, 2))).rejects.toThrow();
      expect(store.behindRoom(BS)).toBe(false);
      await expect(store.sync()).rejects.toThrow();
      await expect(store.sync()).rejects.toThrow();
    } finally {
      await store.close().catch(() => undefined);
    }
  });
});
});

describe('WriteBehindStore.syncNow over the O_DIRECT pool file (fsync on the event loop)', () => {
  it('writes what is staged and flushes when nothing is in flight, and declines while a write is', async () => {
    const path = join(await tempDir(), 'pool.dat');
    const store = await WriteBehindStore.over(await openDirect(path));
    const { readFile } = await import('node:fs/promises');
    try {
      const a = Buffer.alloc(BS / 8, 0x5a);
      const staged = store.stageBehind(3, a, BS / 4)();
      expect(store.busy(3)).toBe(true);
      expect(store.syncNow()).toBe(true);
      expect(store.busy(3)).toBe(false);
      await staged; // the staged write's promise settles as written
      expect((await readFile(path)).subarray(3 * BS + BS / 4, 3 * BS + BS / 4 + a.length).equals(a)).toBe(true);

      const inFlight = store.write(4, Buffer.alloc(BS, 7)); // the general path submits at once
      expect(store.syncNow()).toBe(false);
      await inFlight;
      expect(store.syncNow()).toBe(true);

      // A failed write: syncNow reports it as sync() does.
      await fileOf(store).close();
      await expect(store.write(5, Buffer.alloc(BS, 1))).rejects.toThrow();
      expect(() => store.syncNow()).toThrow();
    } finally {
      await store.close().catch(() => undefined);
    }
  });
});

describe('WriteBehindStore after a flush (a flushing writer: runs written eagerly)', () => {
  it('writes a run as soon as its request has been answered, and never ahead of a write it must follow', async () => {
    const path = join(await tempDir(), 'pool.dat');
    const store = await WriteBehindStore.over(await openDirect(path));
    const { readFile } = await import('node:fs/promises');
    const immediate = () => new Promise((r) => setImmediate(r));
    try {
      store.writeSync(3, Buffer.alloc(BS, 1));
      await store.sync();
      const a = Buffer.alloc(8192, 0x5a);
      const aDone = store.stageBehind(3, a, 8192)();
      expect(store.busy(3)).toBe(true);
      await immediate(); // not the 1 ms collection window: written on the event loop by now
      expect(store.busy(3)).toBe(false);
      await aDone;
      // A partial-sector write in flight, then an aligned one to the same block staged behind it: the open
      // run depends on the first (which is no longer the block's tail), so it is not written on the event
      // loop, and syncNow declines, until that write has landed.
      const b = Buffer.alloc(1000, 0x33);
      const bDone = store.stageBehind(3, b, 5)();
      const c = Buffer.alloc(4096, 0x44);
      const cDone = store.stageBehind(3, c, 0)();
      expect(store.syncNow()).toBe(false);
      await Promise.all([bDone, cDone]);
      expect(store.syncNow()).toBe(true);
      const want = Buffer.alloc(BS, 1);
      a.copy(want, 8192);
      b.copy(want, 5);
      c.copy(want, 0);
      expect((await readFile(path)).subarray(3 * BS, 4 * BS).equals(want)).toBe(true);
    } finally {
      await store.close();
    }
  });
});

describe('WriteBehindStore.copyBehind over the O_DIRECT pool file (copy-on-write of a block, off the event loop)', () => {
  it('copies the source as its earlier writes left it, before every later write to the target', async () => {
    const store = await WriteBehindStore.over(await openDirect(join(await tempDir(), 'pool.dat')));
    try {
      const rnd = prng(7);
      const a = randomBytes(rnd, BS);
      store.writeSync(1, a);
      store.writeSync(2, randomBytes(rnd, BS)); // stale bytes of the target: must all be replaced
      // A write to the source still staged (in the open run) when the copy is asked for: the copy follows it.
      const b = randomBytes(rnd, 8192);
      const bDone = store.stageBehind(1, b, 16384)();
      const copied = store.copyBehind(1, 2);
      expect(store.busy(2)).toBe(true);
      // Writes to the target issued after the copy land on top of it, aligned or not.
      const c = randomBytes(rnd, 8192);
      const cDone = store.stageBehind(2, c, 40960)();
      const d = randomBytes(rnd, 1000);
      const dDone = store.stageBehind(2, d, 3)();
      await Promise.race([
        Promise.all([bDone, copied, cDone, dDone]),
        new Promise((_, rej) => setTimeout(() => rej(new Error('copyBehind and the writes around it did not settle')), 5000)),
      ]);
      expect(store.busy(2)).toBe(false);
      const want = Buffer.from(a);
      b.copy(want, 16384);
      c.copy(want, 40960);
      d.copy(want, 3);
      const got = Buffer.alloc(BS);
      await store.read(2, got);
      expect(got.equals(want)).toBe(true);
      const src = Buffer.alloc(BS);
      await store.read(1, src);
      b.copy(a, 16384);
      expect(src.equals(a)).toBe(true);
    } finally {
      await store.close();
    }
  });

  it('a read of the target waits for the copy', async () => {
    const store = await WriteBehindStore.over(await openDirect(join(await tempDir(), 'pool.dat')));
    try {
      const a = randomBytes(prng(8), BS);
      store.writeSync(5, a);
      void store.copyBehind(5, 6);
      const got = Buffer.alloc(BS);
      await store.read(6, got);
      expect(got.equals(a)).toBe(true);
    } finally {
      await store.close();
    }
  });
});

describe('a restore over the O_DIRECT pool lands in whole runs', () => {
  it('blocks staged while every run is in flight go into the open run, not into runs of their own', async () => {
    const { Registry } = await import('../../src/disk/registry.js');
    const { writeDisk, readView } = await import('../../src/disk/io.js');
    const { createSnapshot } = await import('../../src/disk/snapshots.js');
    const { findTarget, producerFor } = await import('../../src/image/snapshotImage.js');
    const { restoreRecorded } = await import('../../src/restore/restore.js');
    const { vi } = await import('vitest');
    const reg = await Registry.open({ dir: await tempDir() });
    const MiB = 1024 * 1024;
    try {
      await reg.create('d', 32 * MiB, BS);
      const data = randomBytes(prng(5), 24 * MiB);
      await writeDisk(reg.ctx, reg.disk('d'), 0, data);
      await createSnapshot(reg.ctx, reg.disk('d'), 's1');
      const p = await producerFor(findTarget(reg, 'd', 's1'));
      const parts: Buffer[] = [];
      for await (const c of p.chunks()) parts.push(Buffer.from(c));
      // Slow pool writes: the landing runs out of free runs again and again and must wait for one.
      const lengths: number[] = [];
      const orig = DirectPoolFileStore.prototype.writeRun;
      const spy = vi.spyOn(DirectPoolFileStore.prototype, 'writeRun').mockImplementation(async function (this: DirectPoolFileStore, pbn, off, src) {
        lengths.push(src.length);
        await new Promise((r) => setTimeout(r, 4));
        return orig.call(this, pbn, off, src);
      });
      try {
        await restoreRecorded(reg, [Buffer.concat(parts)], { mode: 'new', name: 'r' });
      } finally {
        spy.mockRestore();
      }
      expect(lengths.reduce((a, b) => a + b, 0)).toBe(24 * MiB);
      expect(lengths.filter((n) => n !== MiB)).toEqual([]);
      const back = Buffer.alloc(24 * MiB);
      await readView(reg.ctx, reg.disk('r'), -1, 0, back);
      expect(back.equals(data)).toBe(true);
    } finally {
      await reg.close();
    }
  });
});

describe('O_DIRECT memory', () => {
  it('arenas are page-aligned WebAssembly memory that O_DIRECT writes and reads whole', async () => {
    const { pageAlignedMemory } = await import('../../src/util/memory.js');
    const { alignedArena, ioAll } = await import('../../src/store/directIo.js');
    const { open } = await import('node:fs/promises');
    const { constants } = await import('node:fs');
    const m = pageAlignedMemory(100_000);
    expect(m?.length).toBe(100_000);
    expect(m?.byteOffset).toBe(0); // the start of a V8-mapped region: page-aligned
    const path = join(await tempDir(), 'direct.dat');
    const arena = (await alignedArena(path, 1 << 20))!;
    expect(arena.byteOffset).toBe(0); // not malloc memory shifted to a sector boundary
    randomBytes(prng(9), 1 << 20).copy(arena);
    const want = Buffer.from(arena);
    const fh = await open(path, constants.O_RDWR | constants.O_CREAT | constants.O_DIRECT, 0o600);
    try {
      await ioAll('write', fh.fd, arena, 4096);
      arena.fill(0);
      await ioAll('read', fh.fd, arena, 4096);
      expect(arena.equals(want)).toBe(true);
    } finally {
      await fh.close();
    }
  });
});
