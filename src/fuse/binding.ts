/**
 * Loads the FUSE binding (fuse-napi): the only code that requires it (mount.ts uses it; the bench's null
 * filesystem, scripts/nullfs.mjs, loads it through here too, so that both pay the same per request).
 */
import type FuseBinding from 'fuse-napi';
import asyncHooks from 'node:async_hooks';
import { createRequire } from 'node:module';

/**
 * The request context fuse-napi keeps for `fuse.context()`, in its place: no storage at all. The binding runs
 * every operation inside an AsyncLocalStorage, and on Node 20 and 22 the first run() turns on promise hooks
 * for the whole process, so from then on every promise the daemon makes (several per request) pays for
 * them. vdiskfs never asks for the context (who sent the request) nor invalidates entries from a callback
 * (the binding's other use of it), so it loads the binding with this in the storage's place. Measured by
 * hand (README, *Design*): the event loop's CPU per 8 KiB write in place fell by about a quarter.
 */
export class NoRequestContext<T> {
  run<R, A extends unknown[]>(_store: T, callback: (...args: A) => R, ...args: A): R {
    return callback(...args);
  }
  exit<R, A extends unknown[]>(callback: (...args: A) => R, ...args: A): R {
    return callback(...args);
  }
  getStore(): T | undefined {
    return undefined;
  }
  enterWith(_store: T): void {}
  disable(): void {}
}

/**
 * require(id) with NoRequestContext as node:async_hooks' AsyncLocalStorage while the module loads (and so
 * for the storages it makes then), the real one restored afterwards for everyone else.
 */
export function requireWithoutRequestContext<M>(id: string, from: string = import.meta.url): M {
  const hooks = asyncHooks as unknown as { AsyncLocalStorage: unknown };
  const real = hooks.AsyncLocalStorage;
  hooks.AsyncLocalStorage = NoRequestContext;
  try {
    return createRequire(from)(id) as M;
  } finally {
    hooks.AsyncLocalStorage = real;
  }
}

export const Fuse = requireWithoutRequestContext<typeof FuseBinding>('fuse-napi');
