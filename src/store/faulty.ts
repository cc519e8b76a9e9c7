/**
 * Fault injection as a block-store layer (tests only): fail or delay the Nth write, fail reads, and
 * "power cut" semantics — writes not yet synced are kept aside and can be dropped, as a crash before
 * fdatasync would. Wrap the bottom store with `Registry.open({ wrap: (s) => new FaultyStore(s, plan) })`.
 */
import type { BlockStore } from './blockStore.js';
import { VdiskError } from '../errors.js';

export interface FaultPlan {
  /** Fail the write with this 1-based sequence number (and every later one if `sticky`). */
  failWriteAt?: number;
  sticky?: boolean;
  /** Delay every write by this many ms. */
  delayMs?: number;
  /** Keep unsynced writes in memory; powerCut() drops them. */
  volatile?: boolean;
}

export class FaultyStore implements BlockStore {
  writes = 0;
  private unsynced = new Map<string, { pbn: number; data: Buffer; offset: number }>();

  constructor(
    private inner: BlockStore,
    public plan: FaultPlan = {},
  ) {}

  get blockSize(): number {
    return this.inner.blockSize;
  }

  async read(pbn: number, dst: Buffer, offsetInBlock = 0): Promise<void> {
    await this.inner.read(pbn, dst, offsetInBlock);
    if (!this.plan.volatile) return;
    // Overlay unsynced writes that cover this range.
    for (const w of this.unsynced.values()) {
      if (w.pbn !== pbn) continue;
      const start = Math.max(w.offset, offsetInBlock);
      const end = Math.min(w.offset + w.data.length, offsetInBlock + dst.length);
      if (start < end) w.data.copy(dst, start - offsetInBlock, start - w.offset, end - w.offset);
    }
  }

  async write(pbn: number, data: Buffer, offsetInBlock = 0): Promise<void> {
    this.writes++;
    const n = this.writes;
    if (this.plan.delayMs) await new Promise((r) => setTimeout(r, this.plan.delayMs));
    const f = this.plan.failWriteAt;
    if (f !== undefined && (n === f || (this.plan.sticky && n > f))) {
      throw new VdiskError('IO', `injected write failure (write #${n}, pbn ${pbn})`);
    }
    if (this.plan.volatile) {
      this.unsynced.set(`${pbn}:${offsetInBlock}:${this.writes}`, { pbn, data: Buffer.from(data), offset: offsetInBlock });
      return;
    }
    await this.inner.write(pbn, data, offsetInBlock);
  }

  /** Forwarded; unsynced writes of the pbn are dropped with it (a later sync must not bring them back). */
  async discard(pbn: number): Promise<void> {
    for (const [k, w] of this.unsynced) if (w.pbn === pbn) this.unsynced.delete(k);
    await this.inner.discard?.(pbn);
  }

  async sync(): Promise<void> {
    for (const w of this.unsynced.values()) await this.inner.write(w.pbn, w.data, w.offset);
    this.unsynced.clear();
    await this.inner.sync();
  }

  /** Forget every write since the last sync, as a power cut would. */
  powerCut(): number {
    const n = this.unsynced.size;
    this.unsynced.clear();
    return n;
  }

  async close(): Promise<void> {
    await this.inner.close();
  }
}
