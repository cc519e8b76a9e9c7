// The FUSE binding is loaded without its per-request AsyncLocalStorage (fuse/binding.ts): what that loader
// gives the module it loads, and that everyone else keeps node's real AsyncLocalStorage.
import { describe, it, expect, afterAll } from 'vitest';
import asyncHooks, { AsyncLocalStorage } from 'node:async_hooks';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { NoRequestContext, requireWithoutRequestContext } from '../../src/fuse/binding.js';

const dir = mkdtempSync(join(tmpdir(), 'vdiskfs-ctx-'));
const from = pathToFileURL(join(dir, 'here.js')).href;
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('requireWithoutRequestContext', () => {
  it('gives the loaded module a storage that keeps no context, and puts the real one back', () => {
    writeFileSync(join(dir, 'user.cjs'), "const { AsyncLocalStorage } = require('async_hooks'); module.exports = { storage: new AsyncLocalStorage() };");
    const { storage } = requireWithoutRequestContext<{ storage: NoRequestContext<string> }>('./user.cjs', from);
    expect(storage).toBeInstanceOf(NoRequestContext);
    expect(storage).not.toBeInstanceOf(AsyncLocalStorage);
    expect(storage.run('ctx', (a: number, b: number) => a + b, 2, 3)).toBe(5);
    expect(storage.run('ctx', () => storage.getStore())).toBeUndefined();
    expect((asyncHooks as unknown as { AsyncLocalStorage: unknown }).AsyncLocalStorage).toBe(AsyncLocalStorage);
    // A storage made afterwards is node's own again.
    const als = new AsyncLocalStorage<string>();
    expect(als.run('ctx', () => als.getStore())).toBe('ctx');
  });

  it('puts the real storage back when the module fails to load', () => {
    writeFileSync(join(dir, 'broken.cjs'), "throw new Error('broken module');");
    expect(() => requireWithoutRequestContext('./broken.cjs', from)).toThrow('broken module');
    expect((asyncHooks as unknown as { AsyncLocalStorage: unknown }).AsyncLocalStorage).toBe(AsyncLocalStorage);
  });
});
