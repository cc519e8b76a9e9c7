// Shared by the fault-injection tests (faults.test.ts, faultsFast.test.ts): a Registry whose pool stores are
// wrapped in FaultyStore layers, reads and writes by either entry the FUSE edge uses (the synchronous fast
// path first, as src/fuse does, or the async path only), and comparisons with a model.
import { expect } from 'vitest';
import { Registry } from '../../src/disk/registry.js';
import type { DiskState } from '../../src/disk/context.js';
import { readView, readViewNow, writeDisk, writeDiskNow } from '../../src/disk/io.js';
import { checkStore } from '../../src/check/check.js';
import { FaultyStore, type FaultPlan } from '../../src/store/faulty.js';

export const K = 1024;
export const M = 1024 * K;

/**
 * How a test reaches the disk: 'async path' calls writeDisk/readView/sync as before the fault layer had
 * synchronous methods; 'fast path' does what the FUSE edge does (src/fuse/nodes.ts, mount.ts): writeDiskNow,
 * readViewNow and Registry.syncNow, falling back to the async path when they decline.
 */
export type Path = 'async path' | 'fast path';
export const PATHS: Path[] = ['async path', 'fast path'];

export function writeVia(path: Path, reg: Registry, d: DiskState, offset: number, src: Buffer): Promise<number> {
  // The deferred work runs at once: the edge runs it (process.nextTick) before the next request can arrive,
  // and a test that issues requests back to back has no such gap.
  const n = path === 'fast path' ? writeDiskNow(reg.ctx, d, offset, src) : undefined;
  return n !== undefined ? Promise.resolve(n) : writeDisk(reg.ctx, d, offset, src);
}

export async function syncVia(path: Path, reg: Registry): Promise<void> {
  if (path === 'fast path' && reg.syncNow()) return;
  await reg.sync();
}

/** Open a store whose pool layers are FaultyStores sharing one plan; `layers` collects them (one per block size). */
export async function openFaulty(dir: string, plan: FaultPlan, poolSize?: number): Promise<{ reg: Registry; layers: FaultyStore[] }> {
  const layers: FaultyStore[] = [];
  const reg = await Registry.open({
    dir,
    ...(poolSize !== undefined ? { poolSize } : {}),
    wrap: (s) => {
      const f = new FaultyStore(s, plan);
      layers.push(f);
      return f;
    },
  });
  return { reg, layers };
}

export async function read(reg: Registry, d: DiskState, offset: number, length: number, snap = -1, path: Path = 'async path'): Promise<Buffer> {
  const b = Buffer.alloc(length, 0xee);
  const now = path === 'fast path' ? readViewNow(reg.ctx, d, snap, offset, b) : undefined;
  const n = now ?? (await readView(reg.ctx, d, snap, offset, b));
  return b.subarray(0, n);
}

export async function readAll(reg: Registry, name: string, snap = -1, path: Path = 'async path'): Promise<Buffer> {
  const d = reg.disk(name);
  const size = snap >= 0 ? d.rec.snapshots[snap]!.size : d.rec.size;
  return read(reg, d, 0, size, snap, path);
}

/** First differing offset of two buffers, or -1. */
export function firstDiff(a: Buffer, b: Buffer): number {
  if (a.length !== b.length) return Math.min(a.length, b.length);
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return i;
  return -1;
}

export function expectSame(actual: Buffer, model: Buffer, what: string): void {
  const d = firstDiff(actual, model);
  expect(d, `${what}: first difference at byte ${d}`).toBe(-1);
}

export async function expectRejects(p: Promise<unknown>): Promise<unknown> {
  let err: unknown;
  try {
    await p;
  } catch (e) {
    err = e;
  }
  expect(err, 'the write should have been rejected').toBeDefined();
  return err;
}

export async function expectCleanCheck(dir: string): Promise<void> {
  const r = await checkStore(dir);
  expect(r.errors, r.errors.join('\n')).toEqual([]);
}
