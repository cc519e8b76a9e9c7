/**
 * Per-pbn order of a store's writes: for each pbn, the tail of its chain of operations in flight (removed
 * when the last one settles). An operation issued for a pbn runs after every one issued for it before; a
 * read of the pbn waits for its chain (settled); busy(pbn) is has(pbn). One implementation for the pool
 * file stores and the write-behind layer.
 */
export class PbnChains {
  private tails = new Map<number, Promise<void>>();

  has(pbn: number): boolean {
    return this.tails.has(pbn);
  }

  get(pbn: number): Promise<void> | undefined {
    return this.tails.get(pbn);
  }

  get size(): number {
    return this.tails.size;
  }

  values(): IterableIterator<Promise<void>> {
    return this.tails.values();
  }

  /** p is now pbn's tail (a staged write the caller settles itself; it calls release(pbn, p) then). */
  set(pbn: number, p: Promise<void>): void {
    this.tails.set(pbn, p);
  }

  /** p has settled: pbn's chain ends unless something was issued after p. */
  release(pbn: number, p: Promise<void>): void {
    if (this.tails.get(pbn) === p) this.tails.delete(pbn);
  }

  /** Run `op` after every operation on pbn .. pbn+count-1 issued so far, as their tail. Returns op's promise. */
  after(pbn: number, count: number, op: () => Promise<void>): Promise<void> {
    const prev: Promise<void>[] = [];
    for (let i = 0; i < count; i++) {
      const t = this.tails.get(pbn + i);
      if (t) prev.push(t);
    }
    const p = prev.length === 0 ? op() : prev.length === 1 ? prev[0]!.then(op, op) : Promise.allSettled(prev).then(op);
    p.catch(() => undefined); // reported to the caller
    for (let i = 0; i < count; i++) this.tails.set(pbn + i, p);
    const done = (): void => {
      for (let i = 0; i < count; i++) this.release(pbn + i, p);
    };
    p.then(done, done);
    return p;
  }

  /** Every operation on pbn has settled, including those issued meanwhile. */
  async settled(pbn: number): Promise<void> {
    for (let t = this.tails.get(pbn); t; t = this.tails.get(pbn)) await t.catch(() => undefined);
  }

  /** Every operation has settled, including those issued meanwhile. */
  async drain(): Promise<void> {
    while (this.tails.size) await Promise.allSettled([...this.tails.values()]);
  }
}
