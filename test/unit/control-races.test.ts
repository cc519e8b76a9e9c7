/**
 * Control commands issued concurrently (two `echo … > .vdisk/ctl` at once: the FUSE layer runs each
 * ctl write's runLine without serialising them). Every command validates (name taken? clones? index of
 * the snapshot?) before it enters the disk's gate, and cloneSnapshot/create take no lock at all, so a
 * concurrent command can invalidate what was checked.
 */
import { describe, it, expect, afterAll } from 'vitest';
import { Registry } from '../../src/disk/registry.js';
import { writeDisk, readView } from '../../src/disk/io.js';
import { createSnapshot } from '../../src/disk/snapshots.js';
import { runLine } from '../../src/control/commands.js';
import { tempDir, cleanupDirs } from './helpers.js';

afterAll(cleanupDirs);

async function byte0(reg: Registry, name: string, snap = -1): Promise<number> {
  const b = Buffer.alloc(1);
  await readView(reg.ctx, reg.disk(name), snap, 0, b);
  return b[0]!;
}

async function setup(): Promise<Registry> {
  const reg = await Registry.open({ dir: await tempDir() });
  await reg.create('d', 64 * 1024, 4096);
  return reg;
}

/** Block 0 is written with `v` (when given) before each named snapshot is taken, then with `last`. */
async function history(reg: Registry, steps: [number | null, string][], last: number): Promise<void> {
  const d = reg.disk('d');
  for (const [v, snap] of steps) {
    if (v !== null) await writeDisk(reg.ctx, d, 0, Buffer.alloc(4096, v));
    await createSnapshot(reg.ctx, d, snap);
  }
  await writeDisk(reg.ctx, d, 0, Buffer.alloc(4096, last));
}

describe('concurrent control commands', () => {
  it('two sequential delete-snapshots keep the remaining snapshot intact (reference)', async () => {
    const reg = await setup();
    await history(reg, [[1, 'a'], [null, 'b'], [null, 'c']], 2); // only c's table holds block 0 (=1)
    await runLine(reg, 'delete-snapshot d a');
    await runLine(reg, 'delete-snapshot d c');
    expect(await byte0(reg, 'd', 0)).toBe(1);
    await reg.close();
  });

  // Fixed bug, kept as a regression test: deleteSnapshot computes the snapshot's index k before gate.exclusively and uses
  // snapshots[k-1] as "older" inside it. If an older snapshot is deleted meanwhile, k is stale: deleting c
  // of [a,b,c] after a was removed takes snapshots[1] = c itself as "older", frees c's preserved blocks
  // instead of moving them to b, and b silently reads the live data (2) instead of its own (1).
  it('concurrent delete-snapshot of an older and a newer snapshot keeps the middle one intact', async () => {
    const reg = await setup();
    await history(reg, [[1, 'a'], [null, 'b'], [null, 'c']], 2); // only c's table holds block 0 (=1)
    await Promise.all([runLine(reg, 'delete-snapshot d a'), runLine(reg, 'delete-snapshot d c')]);
    expect(reg.disk('d').rec.snapshots.map((s) => s.name)).toEqual(['b']);
    expect(await byte0(reg, 'd', 0)).toBe(1); // 2 before the fix
    await reg.close();
  });

  // Fixed bug, kept as a regression test: rollback also resolves the index before the gate; with an older snapshot deleted meanwhile,
  // changedSince(d, staleK) is empty and "rolled d back to c" is reported while nothing was rolled back.
  it('rollback racing delete-snapshot of an older snapshot still rolls back to the named snapshot', async () => {
    const reg = await setup();
    await history(reg, [[1, 'a'], [2, 'b'], [3, 'c']], 4);
    const r = await Promise.allSettled([runLine(reg, 'delete-snapshot d a'), runLine(reg, 'rollback d c')]);
    expect(r[1]!.status).toBe('fulfilled');
    expect(await byte0(reg, 'd')).toBe(3); // 4 before the fix
    await reg.close();
  });

  // Fixed bug, kept as a regression test: deleteSnapshot checks for dependent clones before the gate; cloneSnapshot takes no lock. Both
  // succeed: the clone's backing snapshot is gone and the clone silently reads zeros.
  it('clone racing delete-snapshot of the same snapshot: one of them fails, the clone never loses data', async () => {
    const reg = await setup();
    await history(reg, [[1, 't']], 2);
    const r = await Promise.allSettled([runLine(reg, 'delete-snapshot d t'), runLine(reg, 'clone d t c')]);
    const cloned = r[1]!.status === 'fulfilled';
    const deleted = r[0]!.status === 'fulfilled';
    expect(cloned && deleted).toBe(false); // both succeeded before the fix
    if (cloned) expect(await byte0(reg, 'c')).toBe(1);
    await reg.close();
  });

  // Fixed bug, kept as a regression test: same for deleting the whole disk: `delete d -r` checks clonesOf before the gate.
  it('clone racing delete -r of its origin: one of them fails', async () => {
    const reg = await setup();
    await history(reg, [[1, 't']], 2);
    const r = await Promise.allSettled([runLine(reg, 'delete d -r'), runLine(reg, 'clone d t c')]);
    expect(r.every((x) => x.status === 'fulfilled')).toBe(false); // both succeeded before the fix; c then reads zeros
    await reg.close();
  });

  // Fixed bug, kept as a regression test: the EXISTS checks run before an await (the commit), so the same name can be taken twice:
  // two snapshots named `s` (persisted; the second is unreachable by name), and for create/clone the
  // second record silently replaces the first that was already reported as created.
  it('two concurrent snapshots with the same name: one fails with EXISTS', async () => {
    const reg = await setup();
    const r = await Promise.allSettled([runLine(reg, 'snapshot d s'), runLine(reg, 'snapshot d s')]);
    expect(r.map((x) => x.status).sort()).toEqual(['fulfilled', 'rejected']);
    expect(reg.disk('d').rec.snapshots.map((s) => s.name)).toEqual(['s']); // ['s', 's'] before the fix
    await reg.close();
  });

  it('two concurrent creates (or clones) with the same name: one fails with EXISTS', async () => {
    const reg = await setup();
    await runLine(reg, 'snapshot d s');
    const r1 = await Promise.allSettled([runLine(reg, 'create e 1M'), runLine(reg, 'create e 2M')]);
    expect(r1.map((x) => x.status).sort()).toEqual(['fulfilled', 'rejected']);
    const r2 = await Promise.allSettled([runLine(reg, 'clone d s c'), runLine(reg, 'clone d s c')]);
    expect(r2.map((x) => x.status).sort()).toEqual(['fulfilled', 'rejected']);
    await reg.close();
  });
});
