// Standby disks kept in step and role reversal (issue 16): `vdiskfs replicate` between two stores, the
// snapshot identities the target records, the apply rules (diverged → refused and unchanged; after a
// rollback or with --force → applied), delta sizes bounded by what changed, and SIGKILL while a delta is
// applied (the target is at the base or at the new snapshot, never in between; check finds no errors; a leak a kill left is freed by --repair).

import { cp, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { spawn } from 'node:child_process';
import { afterAll, describe, expect, it } from 'vitest';
import { CLI, M, VdiskMount, loopAvailable, makeTree, q, randomBuffer, sha256, shOk, sleep, teardownAll, vdiskfs, waitForExit, writeAt, type StoreStatus } from './helpers.js';

const noLoop = !(await loopAvailable('replicate.test.ts'));

afterAll(async () => {
  await teardownAll();
});

interface Replicated {
  snapshot: string;
  kind: 'full' | 'delta';
  base?: string;
  bytes: number;
}

async function replicate(from: VdiskMount, to: VdiskMount, extra: string[] = []): Promise<Replicated> {
  const r = await vdiskfs(['replicate', 'd', '--store', from.store, '--to-store', to.store, '--json', ...extra]);
  if (r.code !== 0) throw new Error(`replicate failed (${r.code}): ${r.stderr}`);
  return JSON.parse(r.stdout) as Replicated;
}

const snapsOf = async (m: VdiskMount): Promise<{ name: string; id: string }[]> => ((await m.diskStatus('d'))?.snapshots ?? []).map((s) => ({ name: s.name, id: s.id }));
const diskSha = async (m: VdiskMount): Promise<string> => sha256(await readFile(m.disk('d')));

describe('replicate: a standby kept in step, failover and failback by deltas only', () => {
  it('full then deltas; diverged standby refused and unchanged; accepted after rollback or with --force; deltas carry only changes', async () => {
    const a = await VdiskMount.create();
    const b = await VdiskMount.create();
    await a.ctlOk('create d 64M');
    await writeAt(a.disk('d'), 0, randomBuffer(1, 8 * M));

    const r1 = await replicate(a, b);
    expect(r1.kind).toBe('full');
    expect(await diskSha(b)).toBe(await diskSha(a));
    // The standby records the snapshot under the source's name and identity.
    expect(await snapsOf(b)).toEqual(await snapsOf(a));

    await writeAt(a.disk('d'), 20 * M, randomBuffer(2, M));
    const r2 = await replicate(a, b);
    expect(r2).toMatchObject({ kind: 'delta', base: r1.snapshot });
    expect(r2.bytes).toBeLessThan(M + 64 * 1024); // 1 MiB of blocks and the tables that place them
    expect(await diskSha(b)).toBe(await diskSha(a));

    // Failover: B is written; A (the old primary) also took writes after the last common snapshot.
    await writeAt(b.disk('d'), 40 * M, randomBuffer(3, 2 * M));
    await writeAt(a.disk('d'), 30 * M, randomBuffer(4, M));
    const aBefore = { sha: await diskSha(a), snaps: await snapsOf(a) };
    const refused = await vdiskfs(['replicate', 'd', '--store', b.store, '--to-store', a.store]);
    expect(refused.code).toBe(2);
    expect(refused.stderr).toMatch(new RegExp(`disk d changed since its snapshot ${r2.snapshot}.*--force`));
    expect({ sha: await diskSha(a), snaps: await snapsOf(a) }).toEqual(aBefore); // nothing changed on A
    expect((await snapsOf(b)).map((s) => s.name)).toEqual([r1.snapshot, r2.snapshot]); // B's new snapshot deleted again

    // The admin rolls A back to the last common snapshot; then the delta applies (failback by delta only).
    const used = (await a.status()).pool.usedBytes;
    await a.ctlOk(`rollback d ${r2.snapshot}`);
    expect((await a.status()).pool.usedBytes).toBeLessThan(used); // A's own writes freed, nothing copied
    const r3 = await replicate(b, a);
    expect(r3).toMatchObject({ kind: 'delta', base: r2.snapshot });
    expect(r3.bytes).toBeLessThan(2 * M + 64 * 1024); // B's changes only, not the blocks both got from the full image
    expect(await diskSha(a)).toBe(await diskSha(b));

    // Roles back: A is the primary again, B stopped taking writes after its last send: plain deltas.
    await writeAt(a.disk('d'), 50 * M, randomBuffer(5, M));
    const r4 = await replicate(a, b);
    expect(r4).toMatchObject({ kind: 'delta', base: r3.snapshot });
    expect(r4.bytes).toBeLessThan(M + 64 * 1024);
    expect(await diskSha(b)).toBe(await diskSha(a));

    // B diverges again: refused without --force, applied with it (B rolled back to the base first).
    await writeAt(b.disk('d'), 60 * M, randomBuffer(6, M));
    expect((await vdiskfs(['replicate', 'd', '--store', a.store, '--to-store', b.store])).code).toBe(2);
    const r5 = await replicate(a, b, ['--force', '--keep', '2']);
    expect(r5).toMatchObject({ kind: 'delta', base: r4.snapshot });
    expect(await diskSha(b)).toBe(await diskSha(a));
    // --keep 2: the two newest replica snapshots stay on both sides, with the same identities.
    expect((await snapsOf(a)).map((s) => s.name)).toEqual([r4.snapshot, r5.snapshot]);
    expect(await snapsOf(b)).toEqual(await snapsOf(a));

    // The plain pipe works from the same identities: a delta taken on B applies back on A.
    await b.ctlOk('snapshot d manual');
    const piped = await shOk(`set -o pipefail; node ${q(CLI)} backup d@manual --since ${r5.snapshot} --store ${q(b.store)} | node ${q(CLI)} restore - --into d --store ${q(a.store)}`);
    expect(piped).toMatch(/delta image .* into d/);
    expect((await snapsOf(a)).at(-1)).toEqual((await snapsOf(b)).at(-1));
    for (const m of [a, b]) {
      await m.unmount();
      const c = await vdiskfs(['check', '--store', m.store]);
      expect(c.code, c.stdout + c.stderr).toBe(0);
    }
  });

  it.skipIf(noLoop)('ext4 on the primary: the standby has the same tree after a full image and after deltas', async () => {
    const a = await VdiskMount.create();
    const b = await VdiskMount.create();
    await a.ctlOk('create d 128M');
    await shOk(`mkfs.ext4 -q -F ${q(a.disk('d'))}`);
    for (const seed of [1, 2]) {
      const lm = await a.loopMount(a.disk('d'), `la${seed}`);
      await shOk(`rm -rf ${q(lm)}/t1 && mkdir -p ${q(lm)}/t${seed}`);
      await makeTree(join(lm, `t${seed}`), seed);
      await a.loopUmount(lm);
      const r = await replicate(a, b);
      expect(r.kind).toBe(seed === 1 ? 'full' : 'delta');
      const lb = await b.loopMount(b.disk('d'), `lb${seed}`, 'loop,ro,noload');
      const la = await a.loopMount(a.disk('d'), `la${seed}r`, 'loop,ro,noload');
      await shOk(`diff -r ${q(la)} ${q(lb)}`);
      await a.loopUmount(la);
      await b.loopUmount(lb);
    }
    expect(await diskSha(b)).toBe(await diskSha(a));
  });
});

describe('replicate --to-command (what ssh gives: only a pipe)', () => {
  it('sends a full image, then deltas since the last one sent; a failing command leaves no snapshot behind', async () => {
    const a = await VdiskMount.create();
    const b = await VdiskMount.unmounted();
    await a.ctlOk('create d 32M');
    await writeAt(a.disk('d'), 0, randomBuffer(9, 2 * M));
    const receiver = `node ${q(CLI)} restore - --into copy --create --store ${q(b.store)} -q; echo "$VDISKFS_DISK $VDISKFS_SNAPSHOT base=$VDISKFS_BASE" >> ${q(join(b.root, 'seen'))}`;
    const send = (cmd: string) => vdiskfs(['replicate', 'd', '--store', a.store, '--to-command', cmd, '--json']);
    const r1 = await send(receiver);
    expect(r1.code, r1.stderr).toBe(0);
    const j1 = JSON.parse(r1.stdout) as Replicated;
    expect(j1.kind).toBe('full');
    await writeAt(a.disk('d'), 8 * M, randomBuffer(10, M));
    const r2 = await send(receiver);
    expect(r2.code, r2.stderr).toBe(0);
    const j2 = JSON.parse(r2.stdout) as Replicated;
    expect(j2).toMatchObject({ kind: 'delta', base: j1.snapshot });
    expect(j2.bytes).toBeLessThan(M + 64 * 1024);
    expect((await readFile(join(b.root, 'seen'), 'utf8')).trim().split('\n')).toEqual([`d ${j1.snapshot} base=`, `d ${j2.snapshot} base=${j1.snapshot}`]);
    // A command that fails: exit non-zero with its reason, and the snapshot it was to receive is gone again.
    const before = await snapsOf(a);
    const bad = await send('cat > /dev/null; echo "standby unreachable" >&2; exit 3');
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toMatch(/the --to-command: standby unreachable/);
    expect(await snapsOf(a)).toEqual(before);
    // The copy in B is the disk as of the last good run.
    const m = await VdiskMount.unmounted();
    await vdiskfs(['mount', m.mp, '--store', b.store]).then((r) => expect(r.code, r.stderr).toBe(0));
    expect(sha256(await readFile(m.disk('copy')))).toBe(sha256(await readFile(a.snap('d', j2.snapshot))));
    await vdiskfs(['unmount', m.mp]);
  });
});

describe('SIGKILL while a delta is applied', () => {
  it('leaves the target at the base or at the new snapshot, never in between; check finds no errors', async () => {
    const a = await VdiskMount.create();
    await a.ctlOk('create d 96M');
    await writeAt(a.disk('d'), 0, randomBuffer(7, 4 * M));
    await a.ctlOk('snapshot d base');
    await writeAt(a.disk('d'), 8 * M, randomBuffer(8, 48 * M));
    await a.ctlOk('snapshot d next');
    const work = await a.scratch('work');
    const full = join(work, 'full.img');
    const delta = join(work, 'delta.img');
    await shOk(`node ${q(CLI)} backup d@base -o ${q(full)} --store ${q(a.store)} && node ${q(CLI)} backup d@next --since base -o ${q(delta)} --store ${q(a.store)}`);
    const want = { base: sha256(await readFile(a.snap('d', 'base'))), next: sha256(await readFile(a.snap('d', 'next'))) };

    const template = join(work, 'template');
    await shOk(`node ${q(CLI)} restore ${q(full)} --as d --store ${q(template)} -q`);
    const seen = new Set<string>();
    for (const delay of [150, 600, 1100, 5000]) {
      const store = join(work, `t${delay}`);
      await cp(template, store, { recursive: true });
      const child = spawn(process.execPath, [CLI, 'restore', delta, '--into', 'd', '--store', store, '-q'], { stdio: 'ignore' });
      const done = new Promise<number | null>((res) => child.on('exit', (code) => res(code)));
      await Promise.race([sleep(delay), done]);
      child.kill('SIGKILL');
      await done;
      await waitForExit(child.pid!);
      // A kill may leave written-but-unreferenced space at a pool file's tail: a leak (exit 3), which crashes
      // may cause as documented, never an error; --repair frees it and the store is then clean.
      const c = await vdiskfs(['check', '--store', store]);
      expect([0, 3], `after SIGKILL at ${delay} ms: ${c.stdout}${c.stderr}`).toContain(c.code);
      if (c.code === 3) {
        expect((await vdiskfs(['check', '--repair', '--store', store])).code).toBe(0);
        expect((await vdiskfs(['check', '--store', store])).code).toBe(0);
      }
      const st = JSON.parse((await vdiskfs(['status', '--json', '--store', store])).stdout) as StoreStatus;
      const names = st.disks.find((d) => d.name === 'd')!.snapshots.map((s) => s.name);
      const m = await VdiskMount.unmounted();
      await vdiskfs(['mount', m.mp, '--store', store]).then((r) => expect(r.code, r.stderr).toBe(0));
      const sha = sha256(await readFile(m.disk('d')));
      await vdiskfs(['unmount', m.mp]);
      const at = sha === want.next ? 'next' : sha === want.base ? 'base' : 'between';
      expect(at, `after SIGKILL at ${delay} ms`).not.toBe('between');
      expect(names).toEqual(at === 'next' ? ['base', 'next'] : ['base']);
      seen.add(at);
    }
    expect(seen.has('base')).toBe(true); // an early kill really interrupted an apply
    expect(seen.has('next')).toBe(true);
  });
});
