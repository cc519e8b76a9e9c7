// Shared fixtures for unit tests: seeded PRNG, temporary store directories, error-code assertions.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'vitest';
import { VdiskError } from '../../src/errors.js';

import { prng } from '../prng.js';

export { prng };

export function randomBytes(rnd: () => number, n: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i++) b[i] = ((rnd() * 255) | 0) + 1; // never zero: a whole buffer is never a zero block
  return b;
}

const dirs: string[] = [];

export async function tempDir(): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'vdiskfs-unit-'));
  dirs.push(d);
  return d;
}

export async function cleanupDirs(): Promise<void> {
  while (dirs.length) await rm(dirs.pop()!, { recursive: true, force: true });
}

/** Await `p` and check it rejects with a VdiskError of `code`. */
export async function expectCode(p: Promise<unknown> | (() => unknown), code: string): Promise<VdiskError> {
  let err: unknown;
  try {
    await (typeof p === 'function' ? p() : p);
  } catch (e) {
    err = e;
  }
  expect(err, `expected a VdiskError ${code}`).toBeInstanceOf(VdiskError);
  expect((err as VdiskError).code).toBe(code);
  return err as VdiskError;
}
