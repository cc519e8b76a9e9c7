/**
 * Write-behind as a block-store layer over a RunStore (the O_DIRECT pool file; bottoms.ts assembles it).
 * Writes are collected in *runs*: a run is a 1 MiB staging buffer (memory from the bottom's allocAligned,
 * so the bottom writes from it without a copy) that takes the data of many writes (copied at once: the
 * caller may reuse its buffer) and writes each contiguous stretch with one writeRun on the thread pool,
 * after at most FLUSH_MS or when it is full, awaited, or must be ordered before a later write.
 * Rules that keep this exact:
 * - every write to one pbn lands in issue order: a run (or a write that is not whole sectors, which the
 *   bottom reads, patches and writes) that touches a pbn waits for the write to that pbn issued before it
 *   (a per-pbn chain of promises); inside one run no two stretches overlap (a write contained in a staged
 *   stretch patches it in place; any other overlap closes the run);
 * - anything that must come after the open run (a read of one of its pbns, a partial-sector write to one,
 *   sync) submits the run first, so the open run never waits for something that waits for it;
 * - a pbn with a write staged or in flight is never read from the bottom: read() waits for its chain and
 *   the synchronous path asks busy() first;
 * - the table batch that references a new block waits for the block's write (disk/write.ts), so a crash never
 *   leaves an entry pointing at unwritten data;
 * - a failed write fails every later sync() and ends write-behind (like a disk whose cache lost data).
 */
import { ownPatch, type BlockStore, type Patch, type RunStore } from './blockStore.js';
import { PbnChains } from './chains.js';

const RUN_BYTES = 1024 * 1024;
const RUNS = 8;
const FLUSH_MS = 1;
/**
 * A store flushed (sync) this recently (ms) serves a flushing writer, a database: its runs are written as
 * soon as the request that opened them has been answered (setImmediate), not after FLUSH_MS, so the data is
 * on the device by the time the writer's fsync arrives and the fsync waits for the device flush only.
 */
const EAGER_AFTER_SYNC_MS = 50;
/**
 * Eager runs at most this large are written on the event loop (a database's pages); larger ones go to the
 * thread pool at once, so that a bulk writer's 1 MiB writes never hold the loop (other requests, control
 * commands) for a device write each.
 */
const EAGER_ON_LOOP_BYTES = 128 * 1024;
/** Block copies (copyBehind) in flight at most before the fast path declines (64 KiB blocks: 4 MiB). */
const COPIES_AHEAD = 64;

/** A stretch of a run: store bytes [pos, pos+len) staged at buf[mem, mem+len). */
interface Stretch {
  pos: number;
  len: number;
  mem: number;
}

interface Run {
  buf: Buffer;
  used: number;
  stretches: Stretch[];
  /** pbn -> the stretches that touch it. */
  byPbn: Map<number, Stretch[]>;
  /** Writes issued before this run to pbns it touches. */
  deps: Set<Promise<void>>;
  /** Deps not settled yet: a run is written on the calling thread (writeOpenNow) only when none is left. */
  waiting: number;
  /**
   * The `after` of the writes in this run, if any: such a run holds only the writes of the stageBehind calls
   * that share it (one request's writes in place), so that no other write, whose table batch may wait for it
   * while that batch is queued before `after`'s own, ever waits for `after`.
   */
  gate?: Promise<unknown> | undefined;
  done: Promise<void>;
  resolve: () => void;
  reject: (e: Error) => void;
  /** Stops the timer that submits the run (FLUSH_MS, or the eager setImmediate). */
  cancel: (() => void) | null;
}

export class WriteBehindStore implements BlockStore {
  readonly blockSize: number;
  /** Writes staged or in flight, per pbn in issue order (a run is the tail of each pbn it holds until it settles). */
  private inflight = new PbnChains();
  private open: Run | null = null;
  private freeRuns: Buffer[];
  private roomWaiters: (() => void)[] = [];
  /** The first write failure: every later sync() reports it. */
  private failed: Error | null = null;
  /** Copies in flight (copyBehind). */
  private copies = 0;
  /** When sync()/syncNow() last ran (ms; EAGER_AFTER_SYNC_MS). */
  private lastSync = 0;

  /** Write-behind over `inner`. */
  static async over(inner: RunStore): Promise<WriteBehindStore> {
    return new WriteBehindStore(inner, await inner.allocAligned(RUNS * RUN_BYTES));
  }

  private constructor(
    private inner: RunStore,
    mem: Buffer,
  ) {
    this.blockSize = inner.blockSize;
    this.freeRuns = Array.from({ length: RUNS }, (_, i) => mem.subarray(i * RUN_BYTES, (i + 1) * RUN_BYTES));
  }


  get writesThrough(): boolean | undefined {
    return this.inner.writesThrough;
  }

  // ---- reads: from the bottom once the pbn's writes have landed --------------------------------

  busy(pbn: number): boolean {
    return this.inflight.has(pbn) || (this.inner.busy?.(pbn) ?? false);
  }

  private async settled(pbn: number): Promise<void> {
    if (this.open?.byPbn.has(pbn)) this.submit(this.open);
    await this.inflight.settled(pbn);
  }

  async read(pbn: number, dst: Buffer, offsetInBlock = 0): Promise<void> {
    await this.settled(pbn);
    await this.inner.read(pbn, dst, offsetInBlock);
  }

  /** Only for a pbn that is not busy(). */
  readSync(pbn: number, dst: Buffer, offsetInBlock = 0): void {
    this.inner.readSync(pbn, dst, offsetInBlock);
  }

  async readParallel(pbn: number, dst: Buffer): Promise<void> {
    await this.settled(pbn);
    await (this.inner.readParallel ? this.inner.readParallel(pbn, dst) : this.inner.read(pbn, dst));
  }

  async readRun(pbn: number, count: number, dst: Buffer): Promise<void> {
    for (let i = 0; i < count; i++) {
      const p = pbn + i;
      if (this.inflight.has(p) || this.open?.byPbn.has(p)) await this.settled(p);
    }
    await this.inner.readRun(pbn, count, dst);
  }

  allocAligned(bytes: number): Promise<Buffer> {
    return this.inner.allocAligned(bytes);
  }

  // ---- writes ---------------------------------------------------------------------------------

  /**
   * Whether stageBehind may take `bytes` more now (one request: at most one new run). `fresh`: the bytes go,
   * without `after`, to blocks nothing has been staged for since they were allocated (a landing), so the
   * open run takes them as long as it has room, and a stream of such writes fills whole runs.
   */
  behindRoom(bytes: number, fresh = false): boolean {
    if (this.failed !== null || bytes > RUN_BYTES) return false;
    if (this.freeRuns.length > 0) return true;
    const run = this.open;
    return fresh && run !== null && run.gate === undefined && run.used + bytes <= run.buf.length;
  }

  /**
   * Copy `data` for a write to pbn into the open run now (the caller may reuse its buffer at once); the
   * returned function gives the promise of the write, which settles when the bytes are in the bottom.
   * The caller checked behindRoom() for the request.
   */
  stageBehind(pbn: number, data: Buffer, offsetInBlock = 0, after?: Promise<unknown>): () => Promise<void> {
    const done = this.stage(pbn, data, offsetInBlock, after);
    return () => done;
  }

  /** `after` as a run dependency: a rejection fails write-behind (the run and every later one). */
  private gate(after: Promise<unknown>): Promise<void> {
    return after.then(
      () => undefined,
      (e: unknown) => {
        this.failed ??= e instanceof Error ? e : new Error(String(e));
      },
    );
  }

  private stage(pbn: number, data: Buffer, offsetInBlock: number, after?: Promise<unknown>): Promise<void> {
    const bs = this.blockSize;
    const pos = pbn * bs + offsetInBlock;
    const len = data.length;
    const sector = this.inner.sector;
    if (pos % sector || len % sector) {
      // not whole sectors: the bottom reads, patches and writes them, after the pbn's earlier writes
      if (this.open?.byPbn.has(pbn)) this.submit(this.open);
      const copy = Buffer.from(data);
      const gated = after ? this.gate(after) : undefined;
      return this.inflight.after(pbn, 1, async () => {
        await gated;
        return this.guard(() => this.inner.write(pbn, copy, offsetInBlock));
      });
    }
    let run = this.open;
    if (run && run.gate !== after) {
      this.submit(run); // a gated run takes only its own request's writes (Run.gate)
      run = null;
    }
    if (run) {
      const mine = run.byPbn.get(pbn);
      const hit = mine?.find((s) => pos < s.pos + s.len && s.pos < pos + len);
      if (hit && pos >= hit.pos && pos + len <= hit.pos + hit.len) {
        data.copy(run.buf, hit.mem + pos - hit.pos); // patch what is staged: still one write, in order
        return run.done;
      }
      if (hit || run.used + len > run.buf.length) {
        this.submit(run);
        run = null;
      }
    }
    if (!run) {
      run = this.newRun();
      if (after) {
        run.gate = after;
        this.addDep(run, this.gate(after));
      }
    }
    const tail = this.inflight.get(pbn);
    if (tail && tail !== run.done) this.addDep(run, tail);
    data.copy(run.buf, run.used);
    const last = run.stretches[run.stretches.length - 1];
    let s: Stretch;
    if (last && last.pos + last.len === pos && last.mem + last.len === run.used) {
      last.len += len;
      s = last;
    } else {
      s = { pos, len, mem: run.used };
      run.stretches.push(s);
    }
    run.used += len;
    const list = run.byPbn.get(pbn);
    if (!list) run.byPbn.set(pbn, [s]);
    else if (!list.includes(s)) list.push(s);
    this.inflight.set(pbn, run.done);
    if (run.used === run.buf.length) this.submit(run);
    return run.done;
  }

  private newRun(): Run {
    const buf = this.freeRuns.pop();
    if (!buf) throw new Error('no free write-behind run (behindRoom was not checked)');
    let resolve!: () => void;
    let reject!: (e: Error) => void;
    const done = new Promise<void>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    done.catch(() => undefined); // reported through the callers' promises and sync()
    const run: Run = { buf, used: 0, stretches: [], byPbn: new Map(), deps: new Set(), waiting: 0, done, resolve, reject, cancel: null };
    if (Date.now() - this.lastSync < EAGER_AFTER_SYNC_MS) {
      // The writer has been answered by then (its reply goes out on this tick). A small run with nothing in
      // flight is written on this thread: one syscall, which the fsync that follows would have paid for.
      const t = setImmediate(() => {
        run.cancel = null;
        try {
          if (run.used > EAGER_ON_LOOP_BYTES || !this.writeOpenNow()) this.submit(run);
        } catch {
          // failed: recorded (this.failed) and reported through the run's promise and every later sync()
        }
      });
      run.cancel = () => clearImmediate(t);
    } else {
      const t = setTimeout(() => this.submit(run), FLUSH_MS);
      run.cancel = () => clearTimeout(t);
    }
    this.open = run;
    return run;
  }

  private addDep(run: Run, p: Promise<void>): void {
    if (run.deps.has(p)) return;
    run.deps.add(p);
    run.waiting++;
    const settled = (): void => {
      run.waiting--;
    };
    p.then(settled, settled);
  }

  /** Where a stretch goes: its first block and the offset in it. */
  private at(s: Stretch): [number, number] {
    const pbn = Math.floor(s.pos / this.blockSize);
    return [pbn, s.pos - pbn * this.blockSize];
  }

  /** Close the run and write it once the writes it must follow have settled. */
  private submit(run: Run): void {
    if (this.open !== run) return;
    this.closeRun(run);
    void Promise.allSettled([...run.deps]).then(async () => {
      let err: Error | null = null;
      try {
        if (this.failed) throw this.failed;
        await Promise.all(run.stretches.map((s) => this.inner.writeRun(...this.at(s), run.buf.subarray(s.mem, s.mem + s.len))));
      } catch (e) {
        err = e as Error;
        this.failed ??= err;
      }
      this.settleRun(run, err);
    });
  }

  /** The open run takes no more writes. */
  private closeRun(run: Run): void {
    this.open = null;
    run.cancel?.();
    run.cancel = null;
  }

  /** The run's writes are done (or failed with err): its pbns are no longer busy for it, its buffer is free. */
  private settleRun(run: Run, err: Error | null): void {
    for (const pbn of run.byPbn.keys()) this.inflight.release(pbn, run.done);
    this.freeRuns.push(run.buf);
    for (const w of this.roomWaiters.splice(0)) w();
    if (err) run.reject(err);
    else run.resolve();
  }

  /** op, unless the store failed already; its failure fails the store. */
  private async guard(op: () => Promise<void>): Promise<void> {
    if (this.failed) throw this.failed;
    try {
      await op();
    } catch (e) {
      this.failed ??= e as Error;
      throw e;
    }
  }

  /**
   * Copy block `from` into block `to` behind the caller's back: the copy reads `from` once every write to
   * it issued so far has settled, and is ordered before every write to `to` issued after this call (it
   * becomes `to`'s tail, which later stages and reads wait for). A partial write into a block a snapshot
   * holds is then acknowledged without waiting for the old block to be read (disk/write.ts writeDiskNow);
   * that write comes as `patch` and is written with the copy (one device write, not two).
   */
  copyBehind(from: number, to: number, patch?: Patch): Promise<void> {
    const own = ownPatch(patch);
    // The open run goes now if it holds a write to either block: a write staged to `to` after this call
    // lands in a later run that waits for the copy, and the copy waits for `from`'s writes, so a run that
    // held both would wait for itself.
    if (this.open && (this.open.byPbn.has(from) || this.open.byPbn.has(to))) this.submit(this.open);
    this.copies++;
    const p = this.inflight.after(to, 1, async () => {
      await this.settled(from);
      await this.guard(() => this.inner.copyBlock(from, to, own));
    });
    const done = (): void => {
      this.copies--;
    };
    p.then(done, done);
    return p;
  }

  copyRoom(): boolean {
    return this.failed === null && this.copies < COPIES_AHEAD;
  }

  /** The general path's write: staged like a write-behind and submitted at once; settles when written. */
  async write(pbn: number, data: Buffer, offsetInBlock = 0): Promise<void> {
    if (this.failed) throw this.failed;
    // stage() may need one new run (or none, for a partial-sector write)
    while (this.freeRuns.length === 0) {
      if (this.open) this.submit(this.open);
      await new Promise<void>((r) => this.roomWaiters.push(r));
    }
    const done = this.stage(pbn, data, offsetInBlock);
    if (this.open?.byPbn.has(pbn)) this.submit(this.open);
    return done;
  }

  /** Synchronous write, only for a pbn that is not busy() (tests, tools). */
  writeSync(pbn: number, data: Buffer, offsetInBlock = 0): void {
    this.inner.writeSync!(pbn, data, offsetInBlock);
  }

  // ---- durability -----------------------------------------------------------------------------

  private async drainWrites(): Promise<void> {
    if (this.open) this.submit(this.open);
    await this.inflight.drain();
  }

  async sync(): Promise<void> {
    this.lastSync = Date.now();
    await this.drainWrites();
    if (this.failed) throw this.failed;
    await this.inner.sync();
  }

  /**
   * sync() on this thread when nothing is in flight: the open run is written with blocking calls, then the
   * bottom flushes (see BlockStore.syncNow).
   */
  syncNow(): boolean {
    if (this.failed) throw this.failed;
    this.lastSync = Date.now();
    return this.writeOpenNow() && this.inner.syncNow();
  }

  /**
   * Write the open run (if any) with blocking calls, when every write it must follow has settled: true
   * when nothing of this store is in flight afterwards. False: nothing was done.
   */
  private writeOpenNow(): boolean {
    const run = this.open;
    if (run && run.waiting > 0) return false; // it waits for a table batch (gate), a copy or an earlier write
    for (const tail of this.inflight.values()) if (tail !== run?.done) return false;
    // Every write the open run must follow has settled (each clears its tail when it does).
    if (run) {
      this.closeRun(run);
      let err: Error | null = null;
      try {
        for (const s of run.stretches) this.inner.writeRunSync(...this.at(s), run.buf.subarray(s.mem, s.mem + s.len));
      } catch (e) {
        err = e as Error;
        this.failed ??= err;
      }
      this.settleRun(run, err);
      if (err) throw err;
    }
    return true;
  }

  async close(): Promise<void> {
    await this.drainWrites();
    await this.inner.close();
  }

  async trim(blocks: number): Promise<void> {
    await this.drainWrites();
    await this.inner.trim?.(blocks);
  }

  fileStat(): Promise<{ length: number; allocated: number }> {
    return this.inner.fileStat ? this.inner.fileStat() : Promise.resolve({ length: 0, allocated: 0 });
  }

  async punch(runs: [number, number][]): Promise<void> {
    await this.drainWrites();
    await this.inner.punch?.(runs);
  }
}
