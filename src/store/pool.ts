/**
 * The pool of physical blocks: one BlockStore and one Allocator per block size, and the capacity limit
 * (--pool-size) across all of them. Capacity counts every used pbn once, whoever references it.
 * This is the one place the stack of block-store layers is assembled (see `wrap`).
 */
import { join } from 'node:path';
import { Allocator } from './allocator.js';
import type { BlockStore } from './blockStore.js';
import { PoolFileStore } from './poolFile.js';
import { noSpace } from '../errors.js';
import { formatSize } from '../util/size.js';

export type StoreWrapper = (inner: BlockStore) => BlockStore;

export class Pool {
  private stores = new Map<number, BlockStore>();
  private allocators = new Map<number, Allocator>();
  private opening = new Map<number, Promise<BlockStore>>();

  constructor(
    private dir: string,
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
      p = PoolFileStore.open(join(this.dir, `pool-${blockSize}.dat`), blockSize).then((st) => {
        const wrapped = this.wrap(st);
        this.stores.set(blockSize, wrapped);
        return wrapped;
      });
      this.opening.set(blockSize, p);
    }
    return p;
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

  free(blockSize: number, pbn: number): void {
    this.allocator(blockSize).free(pbn);
  }

  async sync(): Promise<void> {
    await Promise.all([...this.stores.values()].map((s) => s.sync()));
  }

  async close(): Promise<void> {
    await Promise.all([...this.stores.values()].map((s) => s.close()));
    this.stores.clear();
  }
}
