/**
 * Block data as RADOS objects in a Ceph pool: the bottom of `--block-store rados` stores (bottoms.ts; the
 * pool, the cluster's ceph.conf and the store's object prefix are in its format record, meta/db.ts). The
 * store conformance suite and test/integration/ceph.test.ts run on it under `npm run test:ceph`. The tables
 * are journaled to the cluster as well (radosMeta.ts), so the store lives there.
 *
 * One object per physical block, named `<prefix>.<blockSize:8 hex>.<pbn:12 hex>`: a block is the unit the
 * tables address and copy-on-write moves, so one object per block keeps every write a single-object write
 * (atomic in RADOS) and a discard a single remove; 64 KiB objects are well inside what RADOS handles
 * efficiently. A block never written (no object) reads as zeros. A write is acknowledged by librados once
 * every replica has it, so sync() only waits for writes in flight. Per-pbn order (chains.ts): a write,
 * read or discard of a pbn runs after every earlier one of the same pbn, as with the pool files.
 * The librados calls go through native/rados (an N-API addon on Node's thread pool), built at install time
 * only where librados-dev is present; without it, opening says how to get it.
 */
import type { BlockStore } from './blockStore.js';
import { radosConnect, type RadosNative } from './rados.js';
import type { BlockSweep } from './levelBlocks.js';
import type { Pool } from './pool.js';
import { PbnChains } from './chains.js';

const hex = (n: number, w: number): string => n.toString(16).padStart(w, '0');

export class RadosBlockStore implements BlockStore {
  private chains = new PbnChains();

  private constructor(
    private rados: RadosNative,
    private handle: unknown,
    readonly blockSize: number,
    private prefix: string,
  ) {}

  static async open(opts: { conf: string; pool: string; prefix: string }, blockSize: number): Promise<RadosBlockStore> {
    const { r, h } = await radosConnect(opts.conf, opts.pool);
    return new RadosBlockStore(r, h, blockSize, opts.prefix);
  }

  private name(pbn: number): string {
    return `${this.prefix}.${hex(this.blockSize, 8)}.${hex(pbn, 12)}`;
  }

  async read(pbn: number, dst: Buffer, offsetInBlock = 0): Promise<void> {
    await this.chains.settled(pbn);
    const n = await this.rados.read(this.handle, this.name(pbn), dst, offsetInBlock);
    if (n < dst.length) dst.fill(0, n); // past the object's end (or no object): zeros
  }

  write(pbn: number, data: Buffer, offsetInBlock = 0): Promise<void> {
    return this.chains.after(pbn, 1, () =>
      offsetInBlock === 0 && data.length === this.blockSize ? this.rados.writeFull(this.handle, this.name(pbn), data) : this.rados.write(this.handle, this.name(pbn), data, offsetInBlock),
    );
  }

  discard(pbn: number): Promise<void> {
    return this.chains.after(pbn, 1, () => this.rados.remove(this.handle, this.name(pbn)));
  }

  /**
   * The open-time sweep (after a crash: a write whose batch never committed, a discard that was lost):
   * every object of this block size whose pbn is not in use is removed (unless dryRun), each removal
   * queued in the same step as its check, so that a write to a pbn allocated later comes after it.
   * Lists the whole pool (librados has no listing by prefix).
   */
  async sweep(isUsed: (pbn: number) => boolean, opts: { dryRun?: boolean } = {}): Promise<BlockSweep> {
    const mine = `${this.prefix}.${hex(this.blockSize, 8)}.`;
    const names = await this.rados.list(this.handle, mine);
    const out: BlockSweep = { present: new Map(), orphans: 0, orphanBytes: 0 };
    const removals: Promise<void>[] = [];
    for (const name of names) {
      const pbn = parseInt(name.slice(mine.length), 16);
      if (!Number.isSafeInteger(pbn)) continue;
      if (isUsed(pbn)) {
        out.present.set(this.blockSize, (out.present.get(this.blockSize) ?? 0) + 1);
        continue;
      }
      out.orphans++;
      out.orphanBytes += this.blockSize;
      if (!opts.dryRun) removals.push(this.discard(pbn));
    }
    await Promise.all(removals);
    return out;
  }

  async sync(): Promise<void> {
    await this.chains.drain();
  }

  async close(): Promise<void> {
    await this.chains.drain();
    await this.rados.close(this.handle);
  }
}

/**
 * RadosBlockStore.sweep over the pool's stores of every block size in `sizes` (pbns in use: the pool's
 * allocators), merged into one report.
 */
export async function sweepObjects(pool: Pool, sizes: Iterable<number>, opts: { dryRun?: boolean } = {}): Promise<BlockSweep> {
  const out: BlockSweep = { present: new Map(), orphans: 0, orphanBytes: 0 };
  for (const bs of new Set(sizes)) {
    const st = await pool.store(bs);
    if (!(st instanceof RadosBlockStore)) continue;
    const s = await st.sweep((pbn) => pool.isUsed(bs, pbn), opts);
    for (const [k, n] of s.present) out.present.set(k, (out.present.get(k) ?? 0) + n);
    out.orphans += s.orphans;
    out.orphanBytes += s.orphanBytes;
  }
  return out;
}
