// Crash safety: fsync'd data survives SIGKILL of the daemon, round after round, and the store opens again
// directly (a plain mount, no repair step) with consistent accounting.

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { K, M, VdiskMount, ddWrite, isMountpoint, nodeScript, randomBuffer, readRange, requireBuild, sha256, teardownAll, vdiskfs } from './helpers.js';

let m: VdiskMount;
let scratch: string;

beforeAll(async () => {
  requireBuild();
  m = await VdiskMount.create({ poolSize: '64M' });
  scratch = await m.scratch('scratch');
});

afterAll(async () => {
  await teardownAll();
});

/** Writes the given (offset, seed, length) pieces to a file with pwrite, fsync after all of them. */
const WRITER = `
  import { open } from 'node:fs/promises';
  const [file, spec] = process.argv.slice(1);
  const rnd = (seed, len) => {
    const buf = Buffer.alloc(len);
    let x = (seed * 2654435761 + 0x9e3779b9) >>> 0 || 1;
    const words = Math.floor(len / 4);
    for (let i = 0; i < words; i++) { x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0; buf.writeUInt32LE(x, i * 4); }
    for (let i = words * 4; i < len; i++) { x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0; buf[i] = x & 0xff; }
    return buf;
  };
  const fh = await open(file, 'r+');
  for (const [off, seed, len] of JSON.parse(spec)) await fh.write(rnd(seed, len), 0, len, off);
  await fh.sync();
  await fh.close();
  console.log('synced');
`;

describe('crash', () => {
  it('fsync’d data survives SIGKILL of the daemon, over several rounds, with no repair step', async () => {
    await m.ctlOk('create cr 8M block-size=4K');
    await m.ctlOk('create cr2 8M');
    const models = { cr: Buffer.alloc(8 * M), cr2: Buffer.alloc(8 * M) };
    const rounds = 4;
    for (let round = 0; round < rounds; round++) {
      // dd with conv=fsync on one disk, a node pwrite+fsync script on the other; unaligned, overlapping
      // the previous rounds' data.
      const off = 12345 + round * 1_000_003;
      const data = randomBuffer(1000 + round, 1_500_001);
      const r = await ddWrite(scratch, m.disk('cr'), off, data, { bs: 65536, fsync: true });
      expect(r.code, r.stderr).toBe(0);
      data.copy(models.cr, off);
      const pieces: [number, number, number][] = [
        [round * 64 * K + 7, 2000 + round, 100_000],
        [5 * M + round * 3 * 64 * K, 3000 + round, 64 * K],
        [8 * M - 1 - round, 4000 + round, 1],
      ];
      const w = await nodeScript(WRITER, [m.disk('cr2'), JSON.stringify(pieces)]);
      expect(w.code, w.stderr).toBe(0);
      expect(w.stdout.trim()).toBe('synced');
      for (const [o, seed, len] of pieces) randomBuffer(seed, len).copy(models.cr2, o);
      // In round 2, free a block with zeros too (also fsync'd).
      if (round === 2) {
        const z = await ddWrite(scratch, m.disk('cr2'), 6 * M, Buffer.alloc(64 * K), { fsync: true });
        expect(z.code, z.stderr).toBe(0);
        models.cr2.fill(0, 6 * M, 6 * M + 64 * K);
      }

      const pid = m.pid!;
      await m.kill9();
      expect(await isMountpoint(m.mp)).toBe(false);
      // The store is left as the crash left it (the stale mounted.json names a dead pid). Mount again
      // directly: no repair command, no flag.
      await m.mount();
      expect(m.pid).not.toBe(pid);

      for (const name of ['cr', 'cr2'] as const) {
        const got = await readRange(m.disk(name), 0, 8 * M);
        expect(got.length).toBe(8 * M);
        expect(sha256(got), `${name} after crash round ${round}`).toBe(sha256(models[name]));
      }
      // Accounting after the crash: allocation is exactly the non-zero blocks of the models, and the
      // pool holds exactly those blocks (nothing leaked, nothing double-counted).
      const st = await m.status();
      let total = 0;
      for (const name of ['cr', 'cr2'] as const) {
        const d = st.disks.find((x) => x.name === name)!;
        const bs = d.blockSize;
        let nonZero = 0;
        for (let b = 0; b < 8 * M; b += bs) if (models[name].subarray(b, b + bs).some((v) => v !== 0)) nonZero++;
        expect(d.allocatedBytes, `${name} allocation after crash round ${round}`).toBe(nonZero * bs);
        total += d.allocatedBytes;
      }
      expect(st.pool.usedBytes).toBe(total);
    }
  });

  it('control commands done before a crash are durable (disks, snapshots, deletes)', async () => {
    await m.ctlOk('create gone 1M');
    await m.ctlOk('snapshot cr s1');
    const snapSum = sha256(await readRange(m.snap('cr', 's1'), 0, 8 * M));
    await m.ctlOk('delete gone');
    await m.ctlOk('create fresh 2M');
    const before = await m.status();
    await m.kill9();
    await m.mount();
    const after = await m.status();
    expect({ ...after, tableCache: undefined }).toEqual({ ...before, tableCache: undefined }); // the cache of a new daemon is its own
    expect(after.disks.map((d) => d.name)).toEqual(['cr', 'cr2', 'fresh']);
    expect(sha256(await readRange(m.snap('cr', 's1'), 0, 8 * M))).toBe(snapSum);
    // The commands are in the history that survived.
    const cmds = (await m.history()).map((h) => h.command);
    expect(cmds).toEqual(expect.arrayContaining(['create gone 1M', 'snapshot cr s1', 'delete gone', 'create fresh 2M']));
  });

  it('a successful control command makes the writes before it durable, even without fsync', async () => {
    await m.ctlOk('create nosync 4M block-size=4K');
    for (let round = 0; round < 2; round++) {
      const data = randomBuffer(700 + round, 4 * M);
      // dd without fsync, then a snapshot: the snapshot command commits after the writes it follows.
      const r = await ddWrite(scratch, m.disk('nosync'), 0, data, { bs: 128 * K });
      expect(r.code, r.stderr).toBe(0);
      await m.ctlOk(`snapshot nosync r${round}`);
      await m.kill9();
      await m.mount();
      expect(sha256(await readRange(m.snap('nosync', `r${round}`), 0, 4 * M)), `nosync@r${round}`).toBe(sha256(data));
      expect(sha256(await readRange(m.disk('nosync'), 0, 4 * M)), `live nosync round ${round}`).toBe(sha256(data));
    }
    await m.ctlOk('delete nosync -r');
  });

  it('the offline CLI opens a crashed store directly too', async () => {
    await m.kill9();
    const r = await vdiskfs(['list', '--store', m.store]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^cr\t8M\t/m);
    expect(r.stdout).toMatch(/^cr@s1\t/m);
    const st = await vdiskfs(['status', '--json', '--store', m.store]);
    expect(st.code, st.stderr).toBe(0);
    // And the next mount works, with the log not reporting corruption.
    await m.mount();
    expect((await m.status()).disks.map((d) => d.name)).toEqual(['cr', 'cr2', 'fresh']);
    const log = await readFile(join(m.store, 'vdiskfs.log'), 'utf8');
    expect(log).not.toMatch(/"level":(50|60)/); // no error/fatal entries
  });

  it('SIGKILL during concurrent unsynced writes leaves a consistent store', async () => {
    await m.ctlOk('create busy 8M block-size=4K');
    const base = randomBuffer(500, 8 * M);
    const r = await ddWrite(scratch, m.disk('busy'), 0, base, { bs: M, fsync: true });
    expect(r.code, r.stderr).toBe(0);
    await m.ctlOk('snapshot busy s');
    // Writers overwrite random ranges (some with zeros) without fsync until the daemon dies under them.
    const writer = `
      import { open } from 'node:fs/promises';
      const [file, seed] = process.argv.slice(1);
      let x = Number(seed);
      const rnd = () => ((x = (x * 1103515245 + 12345) >>> 0) / 4294967296);
      const fh = await open(file, 'r+');
      let i = 0;
      try {
        for (;;) {
          const len = 1 + Math.floor(rnd() * 65536);
          const off = Math.floor(rnd() * (8 * 1048576 - len));
          const b = Buffer.alloc(len, i % 7 === 0 ? 0 : (i % 255) + 1);
          await fh.write(b, 0, len, off);
          if (++i === 300) console.log('running');
        }
      } catch (e) {
        console.log('stopped ' + e.code);
      }
    `;
    const { spawn } = await import('node:child_process');
    const procs = [1, 2].map((seed) => {
      const c = spawn(process.execPath, ['--input-type=module', '-e', writer, '--', m.disk('busy'), String(seed)], { stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      const running = new Promise<void>((res) => c.stdout.on('data', (d: Buffer) => ((out += d.toString()), out.includes('running') && res())));
      const done = new Promise<string>((res) => c.on('close', () => res(out)));
      return { running, done };
    });
    await Promise.all(procs.map((p) => p.running));
    await m.kill9();
    const outs = await Promise.all(procs.map((p) => p.done));
    for (const o of outs) expect(o).toMatch(/stopped (ENOTCONN|ECONNABORTED|EIO)/);
    await m.mount();
    // The snapshot is exactly the fsync'd base; the live disk reads fully; the accounting is consistent.
    expect(sha256(await readRange(m.snap('busy', 's'), 0, 8 * M))).toBe(sha256(base));
    expect((await readRange(m.disk('busy'), 0, 8 * M + 1)).length).toBe(8 * M);
    const st = await m.status();
    let sum = 0;
    for (const d of st.disks) sum += d.allocatedBytes + d.snapshots.reduce((a, s) => a + s.heldBytes, 0);
    expect(st.pool.usedBytes).toBe(sum);
    // Deleting everything of the disk returns its space exactly.
    const busy = st.disks.find((d) => d.name === 'busy')!;
    await m.ctlOk('delete busy -r');
    expect((await m.status()).pool.usedBytes).toBe(sum - busy.allocatedBytes - busy.snapshots.reduce((a, s) => a + s.heldBytes, 0));
  });
});

describe('crash during a rollback', () => {
  it('SIGKILL while a rollback moves entries back: the disk reads as the snapshot after the restart, the move finishes, check is clean', async () => {
    const r = await VdiskMount.create();
    await r.ctlOk('create rb 40M block-size=4K'); // 10,240 blocks: more than one batch of the move (REVERT_BATCH)
    const a = randomBuffer(61, 40 * M);
    await ddWrite(scratch, r.disk('rb'), 0, a, { bs: M });
    await r.ctlOk('snapshot rb s');
    const b = randomBuffer(62, 40 * M);
    await ddWrite(scratch, r.disk('rb'), 0, b, { bs: M });
    await r.ctlOk('rollback rb s'); // returns once the disk reads as s; the entries move back behind it
    await r.kill9();
    const c = await vdiskfs(['check', '--store', r.store]);
    expect(c.code, c.stdout + c.stderr).toBe(0); // an unfinished rollback is a warning at most
    await r.mount();
    expect(sha256(await readRange(r.disk('rb'), 0, 40 * M))).toBe(sha256(a));
    await ddWrite(scratch, r.disk('rb'), 0, b.subarray(0, M), { bs: M, fsync: true }); // waits for the move, if any is left
    await r.unmount();
    const c2 = await vdiskfs(['check', '--store', r.store]);
    expect(c2.code, c2.stdout + c2.stderr).toBe(0);
    expect(c2.stdout).not.toMatch(/unfinished/);
    await r.mount();
    const want = Buffer.concat([b.subarray(0, M), a.subarray(M)]);
    expect(sha256(await readRange(r.disk('rb'), 0, 40 * M))).toBe(sha256(want));
    expect(sha256(await readRange(r.snap('rb', 's'), 0, 40 * M))).toBe(sha256(a));
  });
});
