/**
 * Turns pushed chunks (FUSE write() calls) into the async iterable the image parser pulls from, with
 * back-pressure: push() resolves once the parser has taken the chunk and asked for the next one (so the
 * bytes are processed), or rejects with the parser's error — the write that carried the bad bytes fails.
 */
export class ChunkFeeder implements AsyncIterable<Buffer> {
  private waiting: ((r: IteratorResult<Buffer>) => void) | null = null;
  private queued: { chunk: Buffer | null; taken: () => void }[] = [];
  private failure: unknown = null;
  private failWaiters: ((e: unknown) => void)[] = [];

  /** Offer a chunk; resolves when the consumer asks for the next one. */
  push(chunk: Buffer): Promise<void> {
    if (this.failure) return Promise.reject(this.failure);
    return new Promise<void>((resolve, reject) => {
      this.failWaiters.push(reject);
      this.offer({
        chunk,
        taken: () => {
          this.failWaiters = this.failWaiters.filter((r) => r !== reject);
          resolve();
        },
      });
    });
  }

  end(): void {
    this.holding = false;
    this.offer({ chunk: null, taken: () => undefined });
  }

  private holding = false;

  /** Deliver nothing to the consumer until release() (a chunk pushed now waits for it). */
  hold(): void {
    this.holding = true;
  }

  release(): void {
    this.holding = false;
    this.deliver();
  }

  /** The consumer failed: every pending and later push rejects with this error. */
  fail(e: unknown): void {
    this.failure = e;
    for (const r of this.failWaiters) r(e);
    this.failWaiters = [];
  }

  private offer(item: { chunk: Buffer | null; taken: () => void }): void {
    this.queued.push(item);
    this.deliver();
  }

  private pendingTaken: (() => void) | null = null;

  private deliver(): void {
    if (this.holding || !this.waiting || this.queued.length === 0) return;
    const item = this.queued.shift()!;
    const w = this.waiting;
    this.waiting = null;
    this.pendingTaken = item.taken;
    w(item.chunk === null ? { done: true, value: undefined } : { done: false, value: item.chunk });
  }

  [Symbol.asyncIterator](): AsyncIterator<Buffer> {
    return {
      next: () =>
        new Promise<IteratorResult<Buffer>>((resolve) => {
          // Asking for the next chunk means the previous one is fully processed.
          const t = this.pendingTaken;
          this.pendingTaken = null;
          t?.();
          this.waiting = resolve;
          this.deliver();
        }),
      return: async () => {
        const t = this.pendingTaken;
        this.pendingTaken = null;
        t?.();
        return { done: true, value: undefined };
      },
    };
  }
}
