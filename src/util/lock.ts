/**
 * Per-key async mutexes (one per logical block) and a gate that lets many I/Os run but lets a
 * control operation (snapshot, rollback, restore) wait for them to drain and hold new ones back.
 * Keys are locked in ascending order by callers, so multi-block writes cannot deadlock.
 */
export class KeyedLock {
  private tails = new Map<number, Promise<void>>();

  async acquire(key: number): Promise<() => void> {
    const prev = this.tails.get(key);
    let release!: () => void;
    const mine = new Promise<void>((r) => (release = r));
    const tail = prev ? prev.then(() => mine) : mine;
    this.tails.set(key, tail);
    if (prev) await prev;
    return () => {
      if (this.tails.get(key) === tail) this.tails.delete(key);
      release();
    };
  }

  /** True while someone holds or waits for `key` (the fast paths then take the locking path). */
  isLocked(key: number): boolean {
    return this.tails.has(key);
  }

  /** Acquire many keys in ascending order; returns one release for all. */
  async acquireAll(keys: number[]): Promise<() => void> {
    const sorted = [...new Set(keys)].sort((a, b) => a - b);
    const releases: (() => void)[] = [];
    for (const k of sorted) releases.push(await this.acquire(k));
    return () => {
      for (const r of releases.reverse()) r();
    };
  }
}

/** Shared/exclusive gate: I/O enters shared; control operations enter exclusive. */
export class Gate {
  private shared = 0;
  private exclusive: Promise<void> | null = null;
  private drained: (() => void) | null = null;

  /** True while a control operation holds the gate or waits for it. */
  get closed(): boolean {
    return this.exclusive !== null;
  }

  async enter(): Promise<void> {
    while (this.exclusive) await this.exclusive;
    this.shared++;
  }

  leave(): void {
    this.shared--;
    if (this.shared === 0 && this.drained) this.drained();
  }

  async run<T>(fn: () => Promise<T>): Promise<T> {
    await this.enter();
    try {
      return await fn();
    } finally {
      this.leave();
    }
  }

  async exclusively<T>(fn: () => Promise<T>): Promise<T> {
    while (this.exclusive) await this.exclusive;
    let done!: () => void;
    this.exclusive = new Promise<void>((r) => (done = r));
    try {
      if (this.shared > 0) await new Promise<void>((r) => (this.drained = r));
      this.drained = null;
      return await fn();
    } finally {
      this.exclusive = null;
      done();
    }
  }
}
