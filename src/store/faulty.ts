/**
 * Fault injection as a block-store layer (tests only): fail or delay the Nth write, and "power cut"
 * semantics — writes not yet synced are kept aside and can be dropped, as a crash before fdatasync would.
 * Wrap the bottom store with `Registry.open({ wrap: (s) => new FaultyStore(s, plan) })`.
 *
 * The layer offers every optional method its inner store offers (readSync, writeSync, stageBehind, busy,
 * behindRoom, copyBehind, copyRoom, syncNow, readRun, readParallel, allocAligned, discard, trim), so that
 * under it the disk layer takes the same synchronous fast path as in production (disk/write.ts writeDiskNow,
 * readViewNow, Registry.syncNow). Every write, whichever method carries it, counts as one write (`writes`,
 * and per method in `calls`) and can be the one that fails:
 * - a failed write() rejects; a failed writeSync() throws; a failed stageBehind() or copyBehind() rejects
 *   its promise and, as a real failed pwrite behind the caller's back does in the bottoms, fails every
 *   later sync()/syncNow() and ends write-behind (behindRoom and copyRoom say no);
 * - `delayMs` delays every asynchronous mutation (write, write-behind, copy, discard) by the same time, so
 *   they still reach the inner store in issue order; until one does, its pbn is busy() and read() waits
 *   for it. Synchronous writes cannot wait: they are not delayed (callers use them only on pbns not busy);
 * - `volatile` keeps every write (and copy) in this layer, in issue order, until sync() hands them to the
 *   inner store; reads see them on top of the inner store's bytes; powerCut() drops them. A copy is read
 *   (from the inner store plus the writes to its source issued before it) off the caller's thread; its
 *   target is busy() meanwhile.
 */
import { ownPatch, type BlockStore, type Patch } from './blockStore.js';
import { VdiskError } from '../errors.js';

export interface FaultPlan {
  /** Fail the write with this 1-based sequence number (and every later one if `sticky`). */
  failWriteAt?: number;
  sticky?: boolean;
  /** Delay every asynchronous write by this many ms. */
  delayMs?: number;
  /** Keep unsynced writes in memory; powerCut() drops them. */
  volatile?: boolean;
}

/** A write a volatile layer keeps until sync: `data` at `offset` of pbn (a copy's data once its read is done). */
interface Unsynced {
  pbn: number;
  offset: number;
  data: Buffer | null;
  ready?: Promise<void>;
}

type WriteMethod = 'write' | 'writeSync' | 'stageBehind' | 'copyBehind';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export class FaultyStore implements BlockStore {
  writes = 0;
  /** Writes per method, and synchronous reads: tests prove which path the disk layer took. */
  readonly calls = { write: 0, writeSync: 0, stageBehind: 0, copyBehind: 0, readSync: 0, syncNow: 0 };
  /** Volatile writes, in issue order. */
  private unsynced: Unsynced[] = [];
  /** Per pbn, this layer's operations not yet done with it (delayed mutations, volatile copies): busy. */
  private held = new Map<number, Set<Promise<void>>>();
  /** Per pbn, the last staged write that waits for an `after` promise (later writes to the pbn follow it). */
  private gated = new Map<number, Promise<unknown>>();
  /** The first failed write-behind or copy: every later sync reports it. */
  private failed: Error | null = null;

  readonly readParallel?: (pbn: number, dst: Buffer) => Promise<void>;
  readonly readRun?: (pbn: number, count: number, dst: Buffer) => Promise<void>;
  readonly allocAligned?: (bytes: number) => Promise<Buffer>;
  readonly readSync?: (pbn: number, dst: Buffer, offsetInBlock?: number) => void;
  readonly writeSync?: (pbn: number, data: Buffer, offsetInBlock?: number) => void;
  readonly stageBehind?: (pbn: number, data: Buffer, offsetInBlock?: number, after?: Promise<unknown>) => () => Promise<void>;
  readonly copyBehind?: (from: number, to: number, patch?: Patch) => Promise<void>;
  readonly copyRoom?: () => boolean;
  readonly busy?: (pbn: number) => boolean;
  readonly behindRoom?: (bytes: number, fresh?: boolean) => boolean;
  readonly syncNow?: () => boolean;
  readonly trim?: (blocks: number) => Promise<void>;
  readonly punch?: (runs: [number, number][]) => Promise<void>;
  readonly fileStat?: () => Promise<{ length: number; allocated: number }>;

  constructor(
    private inner: BlockStore,
    public plan: FaultPlan = {},
  ) {
    const s = inner;
    if (s.readParallel) this.readParallel = (pbn, dst) => this.readVia(pbn, 1, dst, () => s.readParallel!(pbn, dst));
    if (s.readRun) this.readRun = (pbn, count, dst) => this.readVia(pbn, count, dst, () => s.readRun!(pbn, count, dst));
    if (s.allocAligned) this.allocAligned = (bytes) => s.allocAligned!(bytes);
    if (s.readSync) this.readSync = (pbn, dst, off = 0) => this.readNow(pbn, dst, off);
    if (s.writeSync) this.writeSync = (pbn, data, off = 0) => this.writeNow(pbn, data, off);
    if (s.stageBehind) this.stageBehind = (pbn, data, off = 0, after) => this.stage(pbn, data, off, after);
    if (s.copyBehind) this.copyBehind = (from, to, patch) => this.copy(from, to, patch);
    if (s.copyBehind && s.copyRoom) this.copyRoom = () => this.failed === null && s.copyRoom!();
    if (s.readSync || s.busy) this.busy = (pbn) => this.held.has(pbn) || (s.busy?.(pbn) ?? false);
    if (s.behindRoom) this.behindRoom = (bytes, fresh) => this.failed === null && s.behindRoom!(bytes, fresh);
    if (s.syncNow) this.syncNow = () => this.flushNow();
    if (s.trim) this.trim = (blocks) => this.trimTo(blocks);
    if (s.fileStat) this.fileStat = () => s.fileStat!();
    if (s.punch) {
      this.punch = async (runs) => {
        await this.drainHeld();
        this.unsynced = this.unsynced.filter((w) => !runs.some(([p, n]) => w.pbn >= p && w.pbn < p + n));
        await s.punch!(runs);
      };
    }
  }

  get blockSize(): number {
    return this.inner.blockSize;
  }

  /** Volatile writes are not on the device until sync; otherwise as the inner store. */
  get writesThrough(): boolean {
    return !this.plan.volatile && this.inner.writesThrough === true;
  }

  // ---- reads ----------------------------------------------------------------------------------

  async read(pbn: number, dst: Buffer, offsetInBlock = 0): Promise<void> {
    await this.settled(pbn);
    await this.inner.read(pbn, dst, offsetInBlock);
    this.overlay(pbn, dst, offsetInBlock);
  }

  private readNow(pbn: number, dst: Buffer, offsetInBlock: number): void {
    this.calls.readSync++;
    this.inner.readSync!(pbn, dst, offsetInBlock);
    this.overlay(pbn, dst, offsetInBlock);
  }

  private async readVia(pbn: number, count: number, dst: Buffer, read: () => Promise<void>): Promise<void> {
    for (let i = 0; i < count; i++) await this.settled(pbn + i);
    await read();
    const bs = this.blockSize;
    for (let i = 0; i < count; i++) this.overlay(pbn + i, dst.subarray(i * bs, (i + 1) * bs), 0);
  }

  /** Copy the volatile writes (of `among`, all by default) to pbn that cover dst's range onto it, in issue order. */
  private overlay(pbn: number, dst: Buffer, offsetInBlock: number, among: Unsynced[] = this.unsynced): void {
    for (const w of among) {
      if (w.pbn !== pbn || !w.data) continue;
      const start = Math.max(w.offset, offsetInBlock);
      const end = Math.min(w.offset + w.data.length, offsetInBlock + dst.length);
      if (start < end) w.data.copy(dst, start - offsetInBlock, start - w.offset, end - w.offset);
    }
  }

  /** Every operation of this layer on pbn has settled. */
  private async settled(pbn: number): Promise<void> {
    for (let h = this.held.get(pbn); h; h = this.held.get(pbn)) await Promise.allSettled([...h]);
  }

  // ---- writes ---------------------------------------------------------------------------------

  /** Count one write by `method`; the error to fail it with if the plan says so. */
  private next(method: WriteMethod, pbn: number): VdiskError | null {
    this.calls[method]++;
    const n = ++this.writes;
    const f = this.plan.failWriteAt;
    if (f === undefined || !(n === f || (this.plan.sticky && n > f))) return null;
    return new VdiskError('IO', `injected write failure (write #${n} by ${method}, pbn ${pbn})`);
  }

  async write(pbn: number, data: Buffer, offsetInBlock = 0): Promise<void> {
    const err = this.next('write', pbn);
    const prior = this.gated.get(pbn); // a staged write still waiting for its `after` comes first
    if (prior) await this.hold(pbn, prior.then(() => undefined));
    await this.later(pbn, () => {
      if (err) throw err;
      return this.apply(pbn, data, offsetInBlock, () => this.inner.write(pbn, data, offsetInBlock));
    });
  }

  private writeNow(pbn: number, data: Buffer, offsetInBlock: number): void {
    const err = this.next('writeSync', pbn);
    if (err) throw err;
    if (this.plan.volatile) this.keep(pbn, Buffer.from(data), offsetInBlock);
    else this.inner.writeSync!(pbn, data, offsetInBlock);
  }

  private stage(pbn: number, data: Buffer, offsetInBlock: number, after?: Promise<unknown>): () => Promise<void> {
    const err = this.next('stageBehind', pbn);
    if (err) {
      this.failed ??= err;
      return () => Promise.reject(err);
    }
    if (!this.plan.volatile && !this.plan.delayMs) return this.inner.stageBehind!(pbn, data, offsetInBlock, after);
    const copy = Buffer.from(data); // the caller may reuse data once this returns
    const write = (): Promise<void> =>
      this.later(pbn, () =>
        this.apply(pbn, copy, offsetInBlock, () =>
          this.inner.behindRoom?.(copy.length) ? this.inner.stageBehind!(pbn, copy, offsetInBlock)() : this.inner.write(pbn, copy, offsetInBlock),
        ),
      );
    // A write that waits for `after` (or comes after one that does, on the same pbn: issue order) is held,
    // the pbn busy, until it is applied.
    const prior = this.gated.get(pbn);
    let p: Promise<void>;
    if (after || prior) {
      p = this.hold(pbn, Promise.all([prior, after]).then(write));
      const mine = p.catch(() => undefined);
      this.gated.set(pbn, mine);
      void mine.then(() => {
        if (this.gated.get(pbn) === mine) this.gated.delete(pbn);
      });
    } else p = write();
    p.catch(() => undefined); // reported through the function's promise and sync()
    return () => p;
  }

  private copy(from: number, to: number, patch?: Patch): Promise<void> {
    const err = this.next('copyBehind', to);
    if (err) {
      this.failed ??= err;
      return Promise.reject(err);
    }
    const own = ownPatch(patch);
    if (!this.plan.volatile) return this.later(to, () => this.inner.copyBehind!(from, to, own));
    // The source as its earlier writes leave it: the inner store's bytes plus the volatile writes before this.
    const before = this.unsynced.filter((w) => w.pbn === from);
    const w: Unsynced = { pbn: to, offset: 0, data: null };
    const fill = async (): Promise<void> => {
      for (const b of before) await b.ready;
      await this.settled(from);
      const data = Buffer.alloc(this.blockSize);
      await this.inner.read(from, data);
      this.overlay(from, data, 0, before.filter((b) => this.unsynced.includes(b)));
      own?.data.copy(data, own.offsetInBlock);
      w.data = data;
    };
    w.ready = this.hold(to, fill());
    this.unsynced.push(w);
    return w.ready;
  }

  /** A mutation: kept in this layer when volatile, else `toInner`. */
  private apply(pbn: number, data: Buffer, offsetInBlock: number, toInner: () => Promise<void>): Promise<void> {
    if (!this.plan.volatile) return toInner();
    this.keep(pbn, Buffer.from(data), offsetInBlock);
    return Promise.resolve();
  }

  private keep(pbn: number, data: Buffer, offset: number): void {
    this.unsynced.push({ pbn, offset, data });
  }

  /** Run `op` now, or after the plan's delay (holding pbn busy until it has settled). */
  private later(pbn: number, op: () => Promise<void>): Promise<void> {
    const ms = this.plan.delayMs;
    if (!ms) {
      try {
        return op();
      } catch (e) {
        return Promise.reject(e as Error);
      }
    }
    return this.hold(pbn, sleep(ms).then(op));
  }

  private hold(pbn: number, p: Promise<void>): Promise<void> {
    let set = this.held.get(pbn);
    if (!set) this.held.set(pbn, (set = new Set()));
    set.add(p);
    const done = (): void => {
      set.delete(p);
      if (!set.size && this.held.get(pbn) === set) this.held.delete(pbn);
    };
    p.then(done, done);
    return p;
  }

  /** Forwarded (after the pbn's delayed writes); volatile writes of the pbn go with it (a later sync must not bring them back). */
  async discard(pbn: number): Promise<void> {
    this.unsynced = this.unsynced.filter((w) => w.pbn !== pbn);
    await this.later(pbn, async () => {
      await this.inner.discard?.(pbn);
    });
  }

  // ---- durability -----------------------------------------------------------------------------

  private async drainHeld(): Promise<void> {
    while (this.held.size) await Promise.allSettled([...this.held.values()].flatMap((s) => [...s]));
  }

  async sync(): Promise<void> {
    await this.drainHeld();
    // Each write is handed to the inner store in the same turn it leaves the list: a read never misses it.
    for (let w = this.unsynced[0]; w; w = this.unsynced[0]) {
      await w.ready?.catch(() => undefined);
      if (this.unsynced[0] !== w) continue;
      this.unsynced.shift();
      if (w.data) await this.inner.write(w.pbn, w.data, w.offset);
    }
    if (this.failed) throw this.failed;
    await this.inner.sync();
  }

  /** The inner store's syncNow, once the volatile writes are handed to it synchronously (when they can be). */
  private flushNow(): boolean {
    this.calls.syncNow++;
    if (this.failed) throw this.failed;
    if (this.held.size) return false;
    if (this.unsynced.length) {
      const s = this.inner;
      if (!s.writeSync || this.unsynced.some((w) => !w.data || s.busy?.(w.pbn))) return false;
      for (const w of this.unsynced.splice(0)) s.writeSync(w.pbn, w.data!, w.offset);
    }
    return this.inner.syncNow!();
  }

  /** Forget every write since the last sync, as a power cut would. */
  powerCut(): number {
    return this.unsynced.splice(0).length;
  }

  private async trimTo(blocks: number): Promise<void> {
    await this.drainHeld();
    this.unsynced = this.unsynced.filter((w) => w.pbn < blocks);
    await this.inner.trim!(blocks);
  }

  async close(): Promise<void> {
    await this.drainHeld();
    await this.inner.close();
  }
}
