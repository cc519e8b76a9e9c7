/**
 * The pool of physical blocks: one BlockStore and one Allocator per block size, and the capacity limit
 * (--pool-size) across all of them. Capacity counts every used pbn once, whoever references it.
 * This is the one place the stack of block-store layers is assembled: the bottom with the layers that belong
 * to it (readahead over the O_DIRECT pool file) comes from the factory the registry chose for the store
 * (bottoms.ts), test layers from `wrap`.
 * Freeing a pbn also discards its data in stores that keep space per block (LevelBlockStore).
 */
import { Allocator } from './allocator.js';
import type { BlockStore, BlockStoreFactory } from './blockStore.js';
import { noSpace } from '../errors.js';
import { formatSize } from '../util/size.js';
import { logger } from '../log.js';
import { pbnRuns } from './punch.js';

const log = logger('pool');

/** Runs of freed blocks punched before their pbns go back to the allocator. */
const PUNCH_SLICE = 256;
/** A pool file taking this much more space than its blocks in use gets its free blocks punched at open. */
const PUNCH_AT_OPEN_SLACK = 16 * 1024 * 1024;
/**
 * A slice is punched once the disks have not been written for this long (ms; `sinceWrite`), or after
 * PUNCH_MAX_WAIT_MS of waiting for that: punching costs a process per range and takes the filesystem's
 * lock of the pool file, and the ~900 ranges freed by deleting a snapshot of 1 GiB of random 8 KiB
 * overwrites cut the IOPS of a writer running meanwhile from ~8,000 to 1,250–6,150 (README, *Design*).
 */
const PUNCH_QUIET_MS = 1000;
const PUNCH_MAX_WAIT_MS = 10_000;

export type StoreWrapper = (inner: BlockStore) => BlockStore;

export class Pool {
  private stores = new Map<number, BlockStore>();
  private allocators = new Map<number, Allocator>();
  private opening = new Map<number, Promise<BlockStore>>();
  /** pbns freed while their block size's store was still opening: discarded before anyone gets the store. */
  private discardsAtOpen = new Map<number, number[]>();
  /**
   * Freed pbns of stores that punch holes (store/punch.ts), not yet given back to the allocator: they wait
   * for a durable batch after the one that freed them (takePunchable, at the start of a synced batch), then
   * for their punch (reclaim). Counted as free in usedBytes.
   */
  private toPunch = new Map<number, number[]>();
  /** Blocks held for punching, per block size (freed, not yet back in the allocator). */
  private held = new Map<number, number>();
  private punching: Promise<void> = Promise.resolve();
  private punchFailed = false;

  constructor(
    private openBottom: BlockStoreFactory,
    /** Capacity in bytes; Infinity when unlimited. */
    public capacity: number,
    private wrap: StoreWrapper = (s) => s,
  ) {}

  allocator(blockSize: number): Allocator {
    let a = this.allocators.get(blockSize);
    if (!a) {
      a = new Allocator(blockSize);
      this.allocators.set(blockSize, a);
    }
    return a;
  }

  async store(blockSize: number): Promise<BlockStore> {
    const s = this.stores.get(blockSize);
    if (s) return s;
    let p = this.opening.get(blockSize);
    if (!p) {
      p = this.openBottom(blockSize).then((st) => {
        const wrapped = this.wrap(st);
        this.stores.set(blockSize, wrapped);
        // Before any caller gets the store: a write to a pbn freed earlier then comes after its discard.
        for (const pbn of this.discardsAtOpen.get(blockSize) ?? []) this.discard(wrapped, pbn);
        this.discardsAtOpen.delete(blockSize);
        return wrapped;
      });
      this.opening.set(blockSize, p);
    }
    return p;
  }

  /** Every open store's completed writes are on the device (BlockStore.writesThrough). */
  writesThrough(): boolean {
    return [...this.stores.values()].every((s) => s.writesThrough === true);
  }

  /** The store for blockSize if it is open already (the synchronous fast paths never open one). */
  storeNow(blockSize: number): BlockStore | undefined {
    return this.stores.get(blockSize);
  }

  usedBytes(): number {
    let total = 0;
    for (const a of this.allocators.values()) total += a.used * a.blockSize;
    for (const [bs, n] of this.held) total -= n * bs;
    return total;
  }

  /** Blocks in use (referenced, or reserved for a write in flight). */
  usedBlocks(blockSize: number): number {
    return (this.allocators.get(blockSize)?.used ?? 0) - (this.held.get(blockSize) ?? 0);
  }

  private hold(blockSize: number, n: number): void {
    this.held.set(blockSize, (this.held.get(blockSize) ?? 0) + n);
  }

  /** Reserve a physical block, or fail with NO_SPACE when the pool is full. */
  allocate(blockSize: number): number {
    if (this.usedBytes() + blockSize > this.capacity) {
      throw noSpace(`pool is full (${formatSize(this.usedBytes())} of ${formatSize(this.capacity)} used)`);
    }
    const pbn = this.allocator(blockSize).allocate();
    this.spaceChanges++;
    return pbn;
  }

  /**
   * Changes to the pool files' space (blocks allocated, which a write may turn from a hole or past the end
   * into written space; ranges punched), and how many of them a completed sync() covered. An fdatasync
   * after such a change also commits the filesystem's journal, and that commit waits for the filesystem's
   * other ordered data: under load, no bound. syncNow, which blocks the event loop and with it every
   * request of every disk, takes only a flush with none pending; the others go to sync() on the thread
   * pool. (A snapshot's synced batch settles the tables without flushing the pool: the next fsync would
   * otherwise block.) A counter, not exact: a block allocated before a sync whose write lands after it
   * leaves its journal work to a later flush, which only costs that flush time.
   */
  private spaceChanges = 0;
  private spaceChangesSynced = 0;

  /** Whether the pbn is in use (unlike allocator(), creates nothing for a block size never seen). */
  isUsed(blockSize: number, pbn: number): boolean {
    return this.allocators.get(blockSize)?.isUsed(pbn) ?? false;
  }

  /**
   * The pbn is free again. Callers free a referenced block only after the batch that dropped its last
   * reference committed, and a reserved one only if no batch referencing it was queued or its batch failed
   * (see disk/write.ts): either way its data may go. The discard is ordered before any later write to the pbn
   * (by the store's own per-pbn order, or by discardsAtOpen while the store opens); one that fails leaves
   * unreferenced data that the store's open-time sweep removes.
   */
  free(blockSize: number, pbn: number): void {
    const s = this.stores.get(blockSize);
    if (s?.punch && !this.punchFailed) {
      this.queueForPunch(blockSize, [pbn]);
      this.hold(blockSize, 1);
      return this.onHeld?.();
    }
    this.allocator(blockSize).free(pbn);
    if (s) return this.discard(s, pbn);
    let list = this.discardsAtOpen.get(blockSize);
    if (!list) this.discardsAtOpen.set(blockSize, (list = []));
    list.push(pbn);
    void this.store(blockSize).catch(() => undefined);
  }

  private queueForPunch(blockSize: number, pbns: number[]): void {
    let list = this.toPunch.get(blockSize);
    if (!list) this.toPunch.set(blockSize, (list = []));
    for (const pbn of pbns) list.push(pbn);
  }

  /** The lengths of the open stores' files (block size -> bytes), for stores that have files. */
  async lengths(): Promise<Map<number, number>> {
    const out = new Map<number, number>();
    for (const [bs, s] of this.stores) if (s.fileStat) out.set(bs, (await s.fileStat()).length);
    return out;
  }

  /** Called when freed blocks start waiting for a durable batch (Context schedules one). */
  onHeld: (() => void) | undefined;
  /** Milliseconds since a disk was last written (Context sets it): punching waits for a pause (PUNCH_QUIET_MS). */
  sinceWrite: (() => number) | undefined;

  /** Until the disks have been left alone for PUNCH_QUIET_MS, PUNCH_MAX_WAIT_MS at most, or the pool closes. */
  private async quiet(): Promise<void> {
    const start = Date.now();
    while (this.sinceWrite && !this.closing && this.sinceWrite() < PUNCH_QUIET_MS && Date.now() - start < PUNCH_MAX_WAIT_MS) {
      await new Promise((r) => setTimeout(r, Math.min(100, PUNCH_QUIET_MS - this.sinceWrite!() + 1)));
    }
  }

  /** Freed blocks waiting for their punch (Context forces a synced batch past a limit). */
  punchBacklog(): number {
    let n = 0;
    for (const list of this.toPunch.values()) n += list.length;
    return n;
  }

  /**
   * The freed pbns whose freeing batch is durable once the synced batch about to be written is: Context
   * takes them when it starts such a batch and passes them to reclaim() once it is written (or gives them
   * back with returnPunchable if it failed).
   */
  takePunchable(): Map<number, number[]> | null {
    if (this.toPunch.size === 0) return null;
    const taken = this.toPunch;
    this.toPunch = new Map();
    return taken;
  }

  returnPunchable(taken: Map<number, number[]>): void {
    for (const [bs, pbns] of taken) this.queueForPunch(bs, pbns);
  }

  /**
   * Punch the taken pbns' space out of the pool files, then give them back to the allocator, a slice of runs
   * at a time (one at a time for the whole pool), each after a pause in writing (quiet). A filesystem that
   * cannot punch turns punching off (logged once); the blocks are freed all the same.
   */
  reclaim(taken: Map<number, number[]>): Promise<void> {
    return this.chainPunch(() => this.punchAndFree(taken));
  }

  private chainPunch(job: () => Promise<void>): Promise<void> {
    const next = this.punching.then(job);
    this.punching = next.catch(() => undefined);
    return next;
  }

  private async punchAndFree(taken: Map<number, number[]>): Promise<void> {
    for (const [bs, pbns] of taken) {
      const s = this.stores.get(bs);
      const runs = pbnRuns(pbns);
      for (let i = 0; i < runs.length; i += PUNCH_SLICE) {
        const slice = runs.slice(i, i + PUNCH_SLICE);
        if (s?.punch && !this.punchFailed && !this.closing) {
          await this.quiet();
          // The pool may have started closing during that wait (punchFailed is set only here, one slice at a time).
          if (!this.closing) {
            try {
              this.spaceChanges++;
              await s.punch(slice);
            } catch (e) {
              this.punchFailed = true;
              log.warn({ err: e, blockSize: bs }, 'punching freed pool-file space failed: freed space stays in the pool files (reused by later writes)');
            }
          }
        }
        const a = this.allocator(bs);
        let n = 0;
        for (const [first, count] of slice) for (let pbn = first; pbn < first + count; pbn++, n++) a.free(pbn);
        this.hold(bs, -n);
      }
    }
  }

  /**
   * At open: punch the free blocks below each pool file's high-water mark (space freed before punching
   * existed, or whose punch a crash or a close cut short), in the background, when the file takes notably
   * more space than its blocks in use (st_blocks; punching holes again costs a process per range). Nothing
   * references them, so no batch needs to wait; each slice of runs is held (not allocatable) only while it
   * is punched, and blocks a write took meanwhile are left out. Returns when it is done.
   */
  punchFree(): Promise<void> {
    return this.chainPunch(async () => {
      for (const [bs, a] of this.allocators) {
        const s = await this.store(bs);
        if (!s.punch || !s.fileStat || this.closing) continue;
        const { allocated } = await s.fileStat();
        if (allocated <= a.used * bs + Math.max(PUNCH_AT_OPEN_SLACK, a.used * bs * 0.05)) continue;
        const free: number[] = [];
        for (let pbn = 0; pbn < a.highWater; pbn++) if (!a.isUsed(pbn)) free.push(pbn);
        const runs = pbnRuns(free);
        for (let i = 0; i < runs.length && !this.closing && !this.punchFailed; i += PUNCH_SLICE) {
          const held: number[] = [];
          for (const [first, count] of runs.slice(i, i + PUNCH_SLICE)) for (let pbn = first; pbn < first + count; pbn++) if (!a.isUsed(pbn)) held.push(pbn);
          for (const pbn of held) a.mark(pbn);
          this.hold(bs, held.length);
          await this.punchAndFree(new Map([[bs, held]]));
        }
      }
    });
  }

  private closing = false;

  private discard(s: BlockStore, pbn: number): void {
    s.discard?.(pbn).catch((e: unknown) => log.warn({ err: e, pbn, blockSize: s.blockSize }, 'discarding a freed block failed; the open-time sweep will remove it'));
  }

  /**
   * sync() on this thread, for fsync's fast path (BlockStore.syncNow): true once every store has flushed,
   * false when one cannot now (space changed since the last sync, a store still opening, one without
   * syncNow, a write in flight); then sync().
   */
  syncNow(): boolean {
    if (this.spaceChanges !== this.spaceChangesSynced) return false; // see spaceChanges
    if (this.opening.size !== this.stores.size) return false;
    const stores = [...this.stores.values()];
    if (!stores.every((s) => s.syncNow)) return false;
    return stores.every((s) => s.syncNow!());
  }

  async sync(): Promise<void> {
    const changes = this.spaceChanges;
    await Promise.allSettled([...this.opening.values()]); // a store still opening may have discards queued
    await Promise.all([...this.stores.values()].map((s) => s.sync()));
    this.spaceChangesSynced = Math.max(this.spaceChangesSynced, changes);
  }

  /** Close every store; a clean close gives back the space past the last block in use (trim). */
  /**
   * First step of a close: no more punching (one in progress finishes its slice; the rest is freed without
   * punching), and held blocks are free. Then usedEnds() says where close() will cut the files.
   */
  async settle(): Promise<void> {
    await Promise.allSettled([...this.opening.values()]);
    this.closing = true;
    await this.punching;
    for (const [bs, pbns] of this.toPunch) {
      for (const pbn of pbns) this.allocator(bs).free(pbn);
      this.hold(bs, -pbns.length);
    }
    this.toPunch.clear();
  }

  /** Bytes each open store keeps at close (block size -> bytes): its blocks up to the last one in use. */
  usedEnds(): Map<number, number> {
    const out = new Map<number, number>();
    for (const bs of this.stores.keys()) out.set(bs, this.allocator(bs).usedEnd() * bs);
    return out;
  }

  /** `trim`: give back the space past the last block in use (a clean close). */
  async close(opts: { trim?: boolean } = {}): Promise<void> {
    await this.settle();
    await Promise.all(
      [...this.stores.values()].map(async (s) => {
        try {
          if (opts.trim !== false) await s.trim?.(this.allocator(s.blockSize).usedEnd());
        } catch (e) {
          log.warn({ err: e, blockSize: s.blockSize }, 'giving back pool-file space at close failed; `vdiskfs check --repair` does it');
        }
        await s.close();
      }),
    );
    this.stores.clear();
  }
}
