// The bench's reference FUSE filesystems (scripts/nullfs.mjs), really mounted: the bench reports vdiskfs as
// ratios to them, so a passthrough that lost or invented bytes would make every ratio wrong. Null FUSE
// discards writes and reads zeros; the passthrough reads and writes its backing file.

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { M, REPO, expectSame, fusermount, isMountpoint, randomBuffer, readRange, sleep, writeAt } from './helpers.js';

const SIZE = 16 * M;
let dir: string;
const servers: { child: ChildProcess; mountpoint: string }[] = [];

/** nullfs.mjs on a new mountpoint (with a backing file: the passthrough); resolves once it prints ready. */
async function mountNullfs(name: string, backing?: string): Promise<string> {
  const mountpoint = join(dir, name);
  await mkdir(mountpoint);
  const child = spawn(process.execPath, [join(REPO, 'scripts/nullfs.mjs'), mountpoint, String(SIZE), ...(backing ? [backing] : [])], { stdio: ['ignore', 'pipe', 'pipe'] });
  servers.push({ child, mountpoint });
  let err = '';
  child.stderr!.on('data', (d) => (err += String(d)));
  await new Promise<void>((resolve, reject) => {
    child.stdout!.on('data', (d) => String(d).includes('ready') && resolve());
    child.on('exit', (code) => reject(new Error(`nullfs exited with ${code}: ${err}`)));
  });
  expect(await isMountpoint(mountpoint)).toBe(true);
  return join(mountpoint, 'null');
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vdiskfs-benchfs-'));
});

afterAll(async () => {
  for (const s of servers) {
    s.child.kill('SIGTERM');
    for (let i = 0; i < 50 && (await isMountpoint(s.mountpoint)); i++) await sleep(100);
    if (await isMountpoint(s.mountpoint)) await fusermount(['-uz', s.mountpoint]);
  }
  await rm(dir, { recursive: true, force: true });
});

describe('bench reference filesystems (scripts/nullfs.mjs)', () => {
  it('null FUSE takes writes and reads zeros', async () => {
    const file = await mountNullfs('null');
    await writeAt(file, M, randomBuffer(1, M));
    // (the written range itself may come back from the kernel's page cache)
    expectSame(await readRange(file, 2 * M, 4 * M), Buffer.alloc(4 * M), 'null FUSE read');
  });

  it('the passthrough reads and writes its backing file, aligned and not', async () => {
    const backing = join(dir, 'pass.img');
    const file = await mountNullfs('pass', backing);
    expect((await stat(backing)).size).toBe(SIZE);
    const want = Buffer.alloc(SIZE);
    const put = async (off: number, data: Buffer, fsync = false): Promise<void> => {
      await writeAt(file, off, data, fsync);
      data.copy(want, off);
    };
    await put(0, randomBuffer(2, 3 * M)); // 1 MiB requests
    await put(5 * M + 123, randomBuffer(3, 777)); // inside one page, not on sector boundaries
    await put(8 * M - 1000, randomBuffer(4, 5000), true); // across pages
    expectSame(await readFile(backing), want, 'backing file after the writes');
    // Read back through the mount after the page cache is gone: the bytes come from the backing file.
    await writeAt('/proc/sys/vm/drop_caches', 0, Buffer.from('3\n')).catch(() => undefined);
    expectSame(await readRange(file, 0, SIZE), want, 'passthrough read');
    expectSame(await readRange(file, 5 * M + 100, 4096), want.subarray(5 * M + 100, 5 * M + 100 + 4096), 'unaligned read');
  });
});
