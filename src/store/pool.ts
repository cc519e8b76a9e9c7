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

const log = logger('pool');

export type StoreWrapper = (inner: BlockStore) => BlockStore;

export class Pool {
  private stores = new Map<number, BlockStore>();
  private allocators = new Map<number, Allocator>();
  private opening = new Map<number, Promise<BlockStore>>();
  /** pbns freed while their block size's store was still opening: discarded before anyone gets the store. */
  private discardsAtOpen = new Map<number, number[]>();

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
    return total;
  }

  usedBlocks(blockSize: number): number {
    return this.allocators.get(blockSize)?.used ?? 0;
  }

  /** Reserve a physical block, or fail with NO_SPACE when the pool is full. */
  allocate(blockSize: number): number {
    if (this.usedBytes() + blockSize > this.capacity) {
      throw noSpace(`pool is full (${formatSize(this.usedBytes())} of ${formatSize(this.capacity)} used)`);
    }
    return this.allocator(blockSize).allocate();
  }

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
    this.allocator(blockSize).free(pbn);
    const s = this.stores.get(blockSize);
    if (s) return this.discard(s, pbn);
    let list = this.discardsAtOpen.get(blockSize);
    if (!list) this.discardsAtOpen.set(blockSize, (list = []));
    list.push(pbn);
    void this.store(blockSize).catch(() => undefined);
  }

  private discard(s: BlockStore, pbn: number): void {
    s.discard?.(pbn).catch((e: unknown) => log.warn({ err: e, pbn, blockSize: s.blockSize }, 'discarding a freed block failed; the open-time sweep will remove it'));
  }

  /**
   * sync() on this thread, for fsync's fast path (BlockStore.syncNow): true once every store has flushed,
   * false when one cannot now (a store still opening, one without syncNow, a write in flight); then sync().
   */
  syncNow(): boolean {
    if (this.opening.size !== this.stores.size) return false;
    const stores = [...this.stores.values()];
    if (!stores.every((s) => s.syncNow)) return false;
    return stores.every((s) => s.syncNow!());
  }

  async sync(): Promise<void> {
    await Promise.allSettled([...this.opening.values()]); // a store still opening may have discards queued
    await Promise.all([...this.stores.values()].map((s) => s.sync()));
  }

  /** Close every store; a clean close gives back the space past the last block in use (trim). */
  async close(): Promise<void> {
    await Promise.allSettled([...this.opening.values()]);
    await Promise.all(
      [...this.stores.values()].map(async (s) => {
        try {
          await s.trim?.(this.allocator(s.blockSize).usedEnd());
        } catch (e) {
          log.warn({ err: e, blockSize: s.blockSize }, 'giving back pool-file space at close failed; `vdiskfs check --repair` does it');
        }
        await s.close();
      }),
    );
    this.stores.clear();
  }
}
