// Real-mount tests of the core: disks as files, byte-exact I/O, thin allocation, the control file, status,
// concurrency, remount, the CLI (offline and through a mount) and the mount command's option forms.

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { open, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { mountDevice } from '../../src/util/mountinfo.js';
import { prng } from '../prng.js';
import {
  K,
  M,
  T,
  VdiskMount,
  dd,
  ddRead,
  ddWrite,
  duBytes,
  errnoOf,
  isMountpoint,
  lsSize,
  mountTypeOf,
  nodeScript,
  randomBuffer,
  readRange,
  requireBuild,
  sh,
  sha256,
  sha256Range,
  sleep,
  teardownAll,
  CLI,
  vdiskfs,
  waitForExit,
  writeAt,
} from './helpers.js';

let m: VdiskMount;
let scratch: string;

beforeAll(async () => {
  requireBuild();
  m = await VdiskMount.create();
  scratch = await m.scratch('scratch');
});

afterAll(async () => {
  await teardownAll();
});

/** A disk of `size` bytes with an in-memory model of its content. */
async function modelDisk(name: string, size: number, blockSize?: string): Promise<Buffer> {
  await m.ctlOk(`create ${name} ${size}${blockSize ? ` block-size=${blockSize}` : ''}`);
  return Buffer.alloc(size);
}

async function expectDiskEquals(name: string, model: Buffer): Promise<void> {
  const got = await readRange(m.disk(name), 0, model.length + 4096);
  expect(got.length).toBe(model.length);
  if (!got.equals(model)) {
    let i = 0;
    while (got[i] === model[i]) i++;
    expect.fail(`disk ${name} differs from the model first at byte ${i}`);
  }
}

describe('core', () => {
  it('creates disks through the control file', async () => {
    await m.ctlOk('create c4k 3M block-size=4K');
    await m.ctlOk('create c64k 3M');
    await m.ctlOk('create c1m 5M block-size=1M');
    const names = await readdir(m.mp);
    expect(names).toEqual(expect.arrayContaining(['.vdisk', 'c4k', 'c64k', 'c1m']));
    expect((await stat(m.disk('c4k'))).size).toBe(3 * M);
    expect((await stat(m.disk('c1m'))).size).toBe(5 * M);
    expect(await duBytes(m.disk('c64k'))).toBe(0);
    const st = await m.status();
    const by = Object.fromEntries(st.disks.map((d) => [d.name, d]));
    expect(by.c4k).toMatchObject({ size: 3 * M, blockSize: 4 * K, allocatedBytes: 0, snapshots: [] });
    expect(by.c64k).toMatchObject({ size: 3 * M, blockSize: 64 * K, allocatedBytes: 0 });
    expect(by.c1m).toMatchObject({ size: 5 * M, blockSize: 1 * M, allocatedBytes: 0 });
    // A fresh disk reads as zeros all the way.
    expect((await readRange(m.disk('c4k'), 0, 3 * M)).equals(Buffer.alloc(3 * M))).toBe(true);
  });

  for (const [bs, bsBytes] of [
    ['4K', 4 * K],
    ['64K', 64 * K],
    ['1M', M],
  ] as const) {
    it(`dd writes and reads at unaligned offsets, byte for byte (block size ${bs})`, async () => {
      const name = `dd${bs}`;
      const size = 5 * M;
      const model = await modelDisk(name, size, bs);
      // [offset, length, dd bs]: unaligned offsets, lengths not multiples of 512, spanning block boundaries.
      const writes: [number, number, number][] = [
        [12345, 200_001, 4096],
        [bsBytes - 777, 1555, 1000], // straddles the first block boundary
        [3 * bsBytes - 1, 2, 512], // two bytes across a boundary
        [2 * M + 333, 1_234_567, 65536], // many blocks
        [size - 1001, 1001, 999], // up to the very end
        [12345 + 50_000, 7, 7], // small overwrite inside the first write
      ];
      let seed = 1;
      for (const [off, len, ddbs] of writes) {
        const data = randomBuffer(bsBytes + seed++, len);
        const r = await ddWrite(scratch, m.disk(name), off, data, { bs: ddbs });
        expect(r.code, r.stderr).toBe(0);
        data.copy(model, off);
      }
      // Read each range back with dd at its own unaligned offset, with an odd dd block size.
      for (const [off, len] of writes) {
        const got = await ddRead(scratch, m.disk(name), off, len, 3001);
        expect(got.length).toBe(len);
        expect(sha256(got)).toBe(sha256(model.subarray(off, off + len)));
      }
      // And the whole disk, so no neighbouring byte was disturbed.
      await expectDiskEquals(name, model);
    });
  }

  it('a 16T disk: ls -l shows the virtual size, du only the written blocks', async () => {
    await m.ctlOk('create big 16T');
    expect(await lsSize(m.disk('big'))).toBe(16 * T);
    expect(await duBytes(m.disk('big'))).toBe(0);
    const offsets = [0, 1 * T + 12345, 16 * T - 64 * K];
    for (const [i, off] of offsets.entries()) {
      const r = await ddWrite(scratch, m.disk('big'), off, randomBuffer(100 + i, 1000), { bs: 1000 });
      expect(r.code, r.stderr).toBe(0);
    }
    // Three 64K blocks written (each write falls inside one block).
    expect(await duBytes(m.disk('big'))).toBe(3 * 64 * K);
    expect((await m.diskStatus('big'))!.allocatedBytes).toBe(3 * 64 * K);
    expect(await lsSize(m.disk('big'))).toBe(16 * T);
    for (const [i, off] of offsets.entries()) {
      expect((await readRange(m.disk('big'), off, 1000)).equals(randomBuffer(100 + i, 1000))).toBe(true);
    }
    // A read in the middle of the thin space is zeros.
    expect((await readRange(m.disk('big'), 8 * T, 4096)).equals(Buffer.alloc(4096))).toBe(true);
  });

  it('writing a whole block of zeros frees the block', async () => {
    const model = await modelDisk('zf', 1 * M);
    const data = randomBuffer(7, 4 * 64 * K);
    await writeAt(m.disk('zf'), 0, data);
    data.copy(model, 0);
    expect(await duBytes(m.disk('zf'))).toBe(4 * 64 * K);
    // Zeros over a part of block 2 only: still allocated.
    await writeAt(m.disk('zf'), 2 * 64 * K + 100, Buffer.alloc(1000));
    model.fill(0, 2 * 64 * K + 100, 2 * 64 * K + 1100);
    expect(await duBytes(m.disk('zf'))).toBe(4 * 64 * K);
    // A whole aligned block of zeros: block 1 is freed.
    const r = await dd({ if: '/dev/zero', of: m.disk('zf'), bs: 64 * K, count: 1, seek: 1, conv: 'notrunc' });
    expect(r.code, r.stderr).toBe(0);
    model.fill(0, 64 * K, 2 * 64 * K);
    expect(await duBytes(m.disk('zf'))).toBe(3 * 64 * K);
    expect((await m.diskStatus('zf'))!.allocatedBytes).toBe(3 * 64 * K);
    // One aligned 128K write of zeros over blocks 2 and 3: both freed.
    await writeAt(m.disk('zf'), 2 * 64 * K, Buffer.alloc(2 * 64 * K));
    model.fill(0, 2 * 64 * K, 4 * 64 * K);
    expect(await duBytes(m.disk('zf'))).toBe(1 * 64 * K);
    // Zeros over a hole allocate nothing.
    await writeAt(m.disk('zf'), 5 * 64 * K, Buffer.alloc(64 * K));
    await writeAt(m.disk('zf'), 7 * 64 * K + 3, Buffer.alloc(100));
    expect(await duBytes(m.disk('zf'))).toBe(1 * 64 * K);
    await expectDiskEquals('zf', model);
  });

  it('partial writes do not lose neighbouring bytes', async () => {
    const model = await modelDisk('part', 512 * K);
    const base = randomBuffer(11, 512 * K);
    await writeAt(m.disk('part'), 0, base);
    base.copy(model);
    const small: [number, number][] = [
      [1, 1],
      [64 * K - 1, 1],
      [64 * K, 1],
      [100_000, 100],
      [3 * 64 * K - 50, 100],
      [512 * K - 1, 1],
    ];
    for (const [i, [off, len]] of small.entries()) {
      const d = randomBuffer(200 + i, len);
      await writeAt(m.disk('part'), off, d);
      d.copy(model, off);
    }
    await expectDiskEquals('part', model);
  });

  it('reads past the end are short or empty', async () => {
    await m.ctlOk('create rend 1M');
    await writeAt(m.disk('rend'), 1 * M - 100, randomBuffer(5, 100));
    const fh = await open(m.disk('rend'), 'r');
    try {
      const b = Buffer.alloc(1000);
      const a = await fh.read(b, 0, 1000, 1 * M - 100);
      expect(a.bytesRead).toBe(100);
      expect(b.subarray(0, 100).equals(randomBuffer(5, 100))).toBe(true);
      expect((await fh.read(b, 0, 1000, 1 * M)).bytesRead).toBe(0);
      expect((await fh.read(b, 0, 1000, 5 * M)).bytesRead).toBe(0);
    } finally {
      await fh.close();
    }
    // dd over the end copies only what exists.
    const got = await ddRead(scratch, m.disk('rend'), 1 * M - 100, 5000, 4096);
    expect(got.length).toBe(100);
  });

  it('writes past the end fail and do not change the size', async () => {
    await m.ctlOk('create wend 1M');
    const fh = await open(m.disk('wend'), 'r+');
    try {
      expect(await errnoOf(() => fh.write(Buffer.alloc(10, 1), 0, 10, 1 * M))).toBe('EINVAL');
      expect(await errnoOf(() => fh.write(Buffer.alloc(10, 1), 0, 10, 3 * M))).toBe('EINVAL');
      // A write straddling the end is short: only the bytes inside the disk are written.
      const r = await fh.write(Buffer.alloc(1000, 7), 0, 1000, 1 * M - 100);
      expect(r.bytesWritten).toBe(100);
    } finally {
      await fh.close();
    }
    const r = await dd({ if: '/dev/zero', of: m.disk('wend'), bs: 4096, count: 1, seek: 1 * M, oflag: 'seek_bytes', conv: 'notrunc' });
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/Invalid argument/);
    expect((await stat(m.disk('wend'))).size).toBe(1 * M);
    expect((await m.diskStatus('wend'))!.size).toBe(1 * M);
    expect((await readRange(m.disk('wend'), 1 * M - 100, 100)).equals(Buffer.alloc(100, 7))).toBe(true);
  });

  it('bad control commands fail with the right errno, change nothing, and are in the history with the reason', async () => {
    await m.ctlOk('create victim 2M');
    const before = await m.status();
    const long = 'x'.repeat(200);
    const cases: [string, string, RegExp][] = [
      ['frobnicate victim', 'EINVAL', /unknown command/],
      ['create', 'EINVAL', /usage/],
      ['create onlyname', 'EINVAL', /usage/],
      ['snapshot victim', 'EINVAL', /usage/],
      ['clone victim s', 'EINVAL', /usage/],
      ['create z0 0', 'EINVAL', /size|positive|zero/i],
      ['create zabc abc', 'EINVAL', /size|abc/i],
      ['create zneg -5M', 'EINVAL', /size|negative|-5M/i],
      ['create zbs 1M block-size=3000', 'EINVAL', /block.size|power/i],
      ['create zbs 1M block-size=2K', 'EINVAL', /block.size|4K|power/i],
      ['create zbs 1M block-size=2M', 'EINVAL', /block.size|1M|power/i],
      ['create zbs 1M colour=blue', 'EINVAL', /unknown option/],
      ['create a/b 1M', 'EINVAL', /name/],
      ['create .. 1M', 'EINVAL', /name/],
      ['create .hidden 1M', 'EINVAL', /name/],
      [`create ${long} 1M`, 'EINVAL', /name/],
      ['snapshot victim@ 1M', 'EINVAL', /usage|name/],
      ['snapshot victim@', 'EINVAL', /name/],
      ['snapshot victim bad/snap', 'EINVAL', /name/],
      ['delete nosuchdisk', 'ENOENT', /nosuchdisk/],
      ['resize nosuchdisk 1M', 'ENOENT', /nosuchdisk/],
      ['snapshot nosuchdisk s1', 'ENOENT', /nosuchdisk/],
      ['delete-snapshot victim nosuchsnap', 'ENOENT', /nosuchsnap/],
      ['rollback victim nosuchsnap', 'ENOENT', /nosuchsnap/],
      ['clone victim nosuchsnap c', 'ENOENT', /nosuchsnap/],
      ['create victim 1M', 'EEXIST', /exists/],
      ['resize victim 0', 'EINVAL', /size|positive|zero/i],
    ];
    for (const [line, code] of cases) {
      const r = await m.ctl(line);
      expect({ line, ...r }).toEqual({ line, ok: false, code });
    }
    // An empty line is refused too.
    expect(await m.ctl('\n')).toEqual({ ok: false, code: 'EINVAL' });
    // Delete of an open disk: EBUSY, and the disk stays.
    const fh = await open(m.disk('victim'), 'r');
    try {
      expect(await m.ctl('delete victim')).toEqual({ ok: false, code: 'EBUSY' });
      expect(await m.ctl('delete victim -r')).toEqual({ ok: false, code: 'EBUSY' });
    } finally {
      await fh.close();
    }
    // Nothing changed.
    const after = await m.status();
    expect({ ...after, tableCache: undefined }).toEqual({ ...before, tableCache: undefined }); // the cache of a new daemon is its own
    expect((await readdir(m.mp)).sort()).toEqual(['.vdisk', ...before.disks.map((d) => d.name)].sort());
    // Each failure is in the history, as an error, with a reason.
    const hist = await m.history();
    const errors = hist.filter((h) => h.result === 'error');
    for (const [line, , reason] of cases) {
      // The history shows at most 200 characters of a command, then '…'.
      const shown = line.length > 200 ? line.slice(0, 200) + '…' : line;
      const h = errors.find((e) => e.command === shown);
      expect(h, `history entry for '${line}'`).toBeDefined();
      expect(h!.message, `reason for '${line}'`).toMatch(reason);
    }
    const busy = errors.filter((e) => e.command === 'delete victim');
    expect(busy.length).toBe(1);
    expect(busy[0]!.message).toMatch(/open|busy/i);
    // Each history line: ISO time, result, command, message.
    for (const h of hist) {
      expect(Number.isNaN(Date.parse(h.time))).toBe(false);
      expect(['ok', 'error']).toContain(h.result);
    }
    // Finally the disk can be deleted once closed.
    await m.ctlOk('delete victim');
    expect(await readdir(m.mp)).not.toContain('victim');
    expect((await m.history()).pop()).toMatchObject({ result: 'ok', command: 'delete victim' });
  });

  it('identical control commands racing from several processes: exactly one succeeds', async () => {
    await m.ctlOk('create racy 1M');
    const script = `
      import { writeFile } from 'node:fs/promises';
      const [ctl, ...lines] = process.argv.slice(1);
      const rs = await Promise.allSettled(lines.map((l) => writeFile(ctl, l + '\\n')));
      console.log(JSON.stringify(rs.map((r) => (r.status === 'fulfilled' ? 'ok' : r.reason.code))));
    `;
    const ctl = join(m.vdisk, 'ctl');
    const race = async (...lines: string[]): Promise<string[]> => {
      const outs = await Promise.all([nodeScript(script, [ctl, ...lines]), nodeScript(script, [ctl, ...lines])]);
      return outs.flatMap((o) => JSON.parse(o.stdout) as string[]).sort();
    };
    expect(await race('snapshot racy x', 'snapshot racy x')).toEqual(['EEXIST', 'EEXIST', 'EEXIST', 'ok']);
    expect(await race('create racy2 1M', 'create racy2 2M')).toEqual(['EEXIST', 'EEXIST', 'EEXIST', 'ok']);
    expect(await race('clone racy x racy3', 'clone racy x racy3')).toEqual(['EEXIST', 'EEXIST', 'EEXIST', 'ok']);
    const st = await m.status();
    expect(st.disks.find((d) => d.name === 'racy')!.snapshots.map((s) => s.name)).toEqual(['x']);
    expect(st.disks.filter((d) => d.name === 'racy2')).toHaveLength(1);
    await m.ctlOk('delete racy3');
    await m.ctlOk('delete racy -r');
    await m.ctlOk('delete racy2');
  });

  it('status and status.json describe disks and the pool', async () => {
    await m.ctlOk('create st1 10M block-size=4K');
    await m.ctlOk('create st2 2G');
    await writeAt(m.disk('st1'), 4096 * 3 + 10, randomBuffer(3, 4096)); // blocks 3 and 4
    await writeAt(m.disk('st2'), 1 * M, randomBuffer(4, 64 * K)); // block 16
    const st = await m.status();
    const st1 = st.disks.find((d) => d.name === 'st1')!;
    const st2 = st.disks.find((d) => d.name === 'st2')!;
    expect(st1).toMatchObject({ name: 'st1', size: 10 * M, blockSize: 4096, allocatedBytes: 2 * 4096, snapshots: [] });
    expect(st2).toMatchObject({ name: 'st2', size: 2 * 1024 * M, blockSize: 64 * K, allocatedBytes: 64 * K, snapshots: [] });
    expect(Number.isNaN(Date.parse(st1.created))).toBe(false);
    expect(st1.clonedFrom).toBeUndefined();
    // The allocation agrees with st_blocks for every disk, and the pool is the sum (no snapshots here).
    let sum = 0;
    for (const d of st.disks) {
      expect(await duBytes(m.disk(d.name)), d.name).toBe(d.allocatedBytes);
      expect((await stat(m.disk(d.name))).size, d.name).toBe(d.size);
      sum += d.allocatedBytes + d.snapshots.reduce((a, s) => a + s.heldBytes, 0);
    }
    expect(st.pool.usedBytes).toBe(sum);
    // No --pool-size on this mount: unlimited.
    expect(st.pool.capacity).toBeNull();
    expect(st.pool.freeBytes).toBeNull();
    // The human table lists every disk with its size and block size, and the pool line.
    const text = await m.statusText();
    expect(text).toMatch(/^DISK\s+SIZE\s+BLOCK\s+ALLOCATED/);
    expect(text).toMatch(/^st1\s+10M\s+4K\s+8K\s/m);
    expect(text).toMatch(/^st2\s+2G\s+64K\s+64K\s/m);
    expect(text).toMatch(/pool: .* used/);
    // status.json is fresh after a change.
    await m.ctlOk('delete st2');
    expect((await m.status()).disks.map((d) => d.name)).not.toContain('st2');
    expect(await m.statusText()).not.toMatch(/^st2\s/m);
  });

  it('two processes writing concurrently see each other’s writes', async () => {
    await m.ctlOk('create conc 4M');
    // Each writer writes its chunks of 4K (interleaving with the other), fsyncs, then reads until it sees
    // everything the other wrote (bounded wait), and prints a digest of what it finally read.
    const script = `
      import { open } from 'node:fs/promises';
      const [file, who, rounds] = process.argv.slice(1);
      const me = Number(who), other = 1 - me;
      const CH = 4096;
      // chunk content: deterministic from (writer, chunk index, round)
      const fill = (w, i, r) => { const b = Buffer.alloc(CH); for (let k = 0; k < CH; k += 4) b.writeUInt32LE(((w + 1) * 0x1000193 ^ i * 0x9e3779b1 ^ (r + 1) * 0x85ebca6b ^ k) >>> 0, k); return b; };
      const fh = await open(file, 'r+');
      // Region 1: disjoint halves. Writer w owns [w*1M, (w+1)*1M).
      // Region 2 [2M, 2M+512K): same 64K blocks, writer w owns the 4K chunks with index % 2 === w.
      // Region 3 [3M, 3M+256K): both write every chunk, several rounds.
      for (let i = 0; i < 256; i++) {
        await fh.write(fill(me, i, 0), 0, CH, me * 1048576 + i * CH);
        if (i < 128) await fh.write(fill(me, 2 * i + me, 0), 0, CH, 2 * 1048576 + (2 * i + me) * CH);
        if (i % 16 === 0) await new Promise((r) => setImmediate(r));
      }
      for (let r = 0; r < Number(rounds); r++)
        for (let i = 0; i < 64; i++) await fh.write(fill(me, i, r), 0, CH, 3 * 1048576 + i * CH);
      await fh.sync();
      const expectOther = async () => {
        const b = Buffer.alloc(CH);
        for (let i = 0; i < 256; i++) {
          await fh.read(b, 0, CH, other * 1048576 + i * CH);
          if (!b.equals(fill(other, i, 0))) return false;
        }
        for (let i = 0; i < 128; i++) {
          const c = 2 * i + other;
          await fh.read(b, 0, CH, 2 * 1048576 + c * CH);
          if (!b.equals(fill(other, c, 0))) return false;
        }
        return true;
      };
      let seen = false;
      for (let t = 0; t < 600 && !(seen = await expectOther()); t++) await new Promise((r) => setTimeout(r, 50));
      console.log(JSON.stringify({ seen }));
      await fh.close();
    `;
    const rounds = 5;
    const [a, b] = await Promise.all([nodeScript(script, [m.disk('conc'), '0', String(rounds)]), nodeScript(script, [m.disk('conc'), '1', String(rounds)])]);
    expect(a.code, a.stderr).toBe(0);
    expect(b.code, b.stderr).toBe(0);
    expect(JSON.parse(a.stdout)).toEqual({ seen: true });
    expect(JSON.parse(b.stdout)).toEqual({ seen: true });
    // Independently check the final content.
    const CH = 4096;
    const fill = (w: number, i: number, r: number): Buffer => {
      const buf = Buffer.alloc(CH);
      for (let k = 0; k < CH; k += 4) buf.writeUInt32LE((((w + 1) * 0x1000193) ^ (i * 0x9e3779b1) ^ ((r + 1) * 0x85ebca6b) ^ k) >>> 0, k);
      return buf;
    };
    const all = await readRange(m.disk('conc'), 0, 4 * M);
    for (let w = 0; w < 2; w++) {
      for (let i = 0; i < 256; i++) expect(all.subarray(w * M + i * CH, w * M + (i + 1) * CH).equals(fill(w, i, 0)), `region 1 writer ${w} chunk ${i}`).toBe(true);
    }
    for (let c = 0; c < 256; c++) expect(all.subarray(2 * M + c * CH, 2 * M + (c + 1) * CH).equals(fill(c % 2, c, 0)), `region 2 chunk ${c}`).toBe(true);
    // Same chunks written by both: each 4K chunk is one writer's last round, whole (never torn or mixed).
    for (let i = 0; i < 64; i++) {
      const got = all.subarray(3 * M + i * CH, 3 * M + (i + 1) * CH);
      expect(got.equals(fill(0, i, rounds - 1)) || got.equals(fill(1, i, rounds - 1)), `region 3 chunk ${i}`).toBe(true);
    }
    expect(all.subarray(3 * M + 64 * CH).equals(Buffer.alloc(M - 64 * CH))).toBe(true);
  });

  it('resize grows and shrinks; shrinking frees blocks and regrown space reads as zeros', async () => {
    const model = await modelDisk('rs', 1 * M);
    const data = randomBuffer(61, 1 * M);
    await writeAt(m.disk('rs'), 0, data);
    data.copy(model);
    await m.ctlOk('resize rs 3M');
    expect((await stat(m.disk('rs'))).size).toBe(3 * M);
    const grown = Buffer.concat([model, Buffer.alloc(2 * M)]);
    await writeAt(m.disk('rs'), 2 * M + 5, randomBuffer(62, 1000));
    randomBuffer(62, 1000).copy(grown, 2 * M + 5);
    await expectDiskEquals('rs', grown);
    // Shrink to a size inside a block: blocks past the end are freed (the partial last one stays).
    await m.ctlOk('resize rs 200704'); // 196K: blocks 0..2 kept, block 3 partial
    expect((await stat(m.disk('rs'))).size).toBe(196 * K);
    expect(await duBytes(m.disk('rs'))).toBe(4 * 64 * K);
    expect((await m.diskStatus('rs'))!.allocatedBytes).toBe(4 * 64 * K);
    await expectDiskEquals('rs', grown.subarray(0, 196 * K));
    // Grow again: nothing of the old data past the shrink point comes back.
    await m.ctlOk('resize rs 2M');
    const want = Buffer.concat([grown.subarray(0, 196 * K), Buffer.alloc(2 * M - 196 * K)]);
    await expectDiskEquals('rs', want);
    expect(await m.ctl('resize rs 1000')).toEqual({ ok: false, code: 'EINVAL' }); // not a multiple of 512
    expect((await stat(m.disk('rs'))).size).toBe(2 * M);
  });

  it('remount finds the disks and their data', async () => {
    await m.ctlOk('create keep 3M block-size=4K');
    const data = randomBuffer(77, 1_000_003);
    await writeAt(m.disk('keep'), 54321, data);
    const before = await m.status();
    const sums = new Map<string, string>();
    for (const d of before.disks) if (d.size <= 16 * M) sums.set(d.name, await sha256Range(m.disk(d.name), 0, d.size));
    await m.remount();
    expect(await isMountpoint(m.mp)).toBe(true);
    const after = await m.status();
    expect(after.disks).toEqual(before.disks);
    expect(after.pool.usedBytes).toBe(before.pool.usedBytes);
    for (const [name, sum] of sums) expect(await sha256Range(m.disk(name), 0, (await stat(m.disk(name))).size), name).toBe(sum);
    expect((await readRange(m.disk('keep'), 54321, data.length)).equals(data)).toBe(true);
    // The big thin disk survived too.
    expect(await lsSize(m.disk('big'))).toBe(16 * T);
    expect((await readRange(m.disk('big'), 16 * T - 64 * K, 1000)).equals(randomBuffer(102, 1000))).toBe(true);
  });

  it('mount | grep fuse.vdiskfs shows the mount', async () => {
    const r = await sh(`mount | grep fuse.vdiskfs`);
    expect(r.code).toBe(0);
    expect(r.stdout.split('\n').some((l) => l.includes(` on ${m.mp} type fuse.vdiskfs`))).toBe(true);
    expect(await mountTypeOf(m.mp)).toBe('fuse.vdiskfs');
  });

  it('the CLI works offline and, while mounted, through the mount', async () => {
    const o = await VdiskMount.unmounted();
    const store = ['--store', o.store];
    let r = await vdiskfs(['create', 'off1', '10M', ...store]);
    expect(r.code, r.stderr).toBe(0);
    r = await vdiskfs(['create', 'off2', '1G', '--block-size', '4K', ...store]);
    expect(r.code, r.stderr).toBe(0);
    r = await vdiskfs(['create', 'off1', '10M', ...store]);
    expect(r.code).toBe(4); // EXISTS
    expect(r.stderr).toMatch(/exists/);
    r = await vdiskfs(['create', 'bad/name', '10M', ...store]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/name/);
    r = await vdiskfs(['list', ...store]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^off1\t10M\t/m);
    expect(r.stdout).toMatch(/^off2\t1G\t/m);
    r = await vdiskfs(['status', '--json', ...store]);
    expect(r.code, r.stderr).toBe(0);
    const st = JSON.parse(r.stdout) as { disks: { name: string; size: number; blockSize: number }[] };
    expect(st.disks.map((d) => [d.name, d.size, d.blockSize])).toEqual([
      ['off1', 10 * M, 64 * K],
      ['off2', 1024 * M, 4 * K],
    ]);
    r = await vdiskfs(['status', ...store]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^off1\s+10M\s+64K/m);

    // Mounted: the disks made offline are there; CLI commands go through the mount.
    await o.mount();
    expect((await readdir(o.mp)).sort()).toEqual(['.vdisk', 'off1', 'off2']);
    r = await vdiskfs(['create', 'on1', '5M', ...store]);
    expect(r.code, r.stderr).toBe(0);
    expect((await stat(o.disk('on1'))).size).toBe(5 * M);
    r = await vdiskfs(['create', 'on1', '5M', ...store]);
    expect(r.code).toBe(4); // EXISTS, through the mount's EEXIST, as offline (README: exit codes)
    expect(r.stderr).toMatch(/disk on1 exists|on1.*exists/);
    r = await vdiskfs(['snapshot', 'off1', 's1', ...store]);
    expect(r.code, r.stderr).toBe(0);
    r = await vdiskfs(['list', ...store]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^on1\t5M\t/m);
    expect(r.stdout).toMatch(/^off1@s1\t/m);
    r = await vdiskfs(['status', '--json', ...store]);
    expect(r.code, r.stderr).toBe(0);
    expect((JSON.parse(r.stdout) as { disks: { name: string }[] }).disks.map((d) => d.name)).toEqual(['off1', 'off2', 'on1']);
    r = await vdiskfs(['delete', 'off1', ...store]);
    expect(r.code, r.stderr).toBe(5); // BUSY: has a snapshot
    expect(r.stderr).toMatch(/snapshot/);
    r = await vdiskfs(['delete', 'off1', '-r', ...store]);
    expect(r.code, r.stderr).toBe(0);
    expect(await readdir(o.mp)).not.toContain('off1');
    // The history of the mount recorded the commands that came through it.
    expect((await o.history()).map((h) => `${h.result} ${h.command}`)).toEqual(expect.arrayContaining(['ok create on1 5M', 'error create on1 5M', 'ok delete off1 -r']));
    await o.unmount();
    // Offline again: the state made through the mount is there.
    r = await vdiskfs(['list', ...store]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).not.toMatch(/^off1/m);
    expect(r.stdout).toMatch(/^on1\t5M\t/m);
    await o.teardown();
  });

  it('the mount sets the kernel readahead: 1 MiB by default, -o readahead=SIZE, 0 keeps the kernel default, bad values refused', async () => {
    const readaheadKiB = async (mp: string): Promise<number> => {
      const dev = mountDevice(await readFile('/proc/self/mountinfo', 'utf8'), mp);
      expect(dev, `${mp} in mountinfo`).toBeDefined();
      return Number((await readFile(`/sys/class/bdi/${dev}/read_ahead_kb`, 'utf8')).trim());
    };
    expect(await readaheadKiB(m.mp)).toBe(1024);
    for (const [opt, kib] of [['readahead=512K', 512], ['readahead=0', 128]] as const) {
      const o = await VdiskMount.create({ extraArgs: ['-o', opt] });
      try {
        expect(await readaheadKiB(o.mp), opt).toBe(kib);
      } finally {
        await o.teardown();
      }
    }
    const bad = await VdiskMount.unmounted();
    const r = await vdiskfs(['mount', bad.mp, '--store', bad.store, '--readahead', '3000']);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/readahead '3000'/);
    expect(await isMountpoint(bad.mp)).toBe(false);
    await bad.teardown();
  });

  it('-o table_cache=SIZE bounds the table entries kept in memory: random I/O over more blocks than it holds reads and writes every byte right, and status says the cache is full', async () => {
    const o = await VdiskMount.create({ extraArgs: ['-o', 'table_cache=1M'] });
    try {
      // 8 KiB blocks: 64 MiB is 8,192 entries, ~1.7 MB of them, more than 1 MiB holds.
      await o.ctlOk('create t 64M block-size=8K');
      const BS = 8192;
      const n = 8192;
      const expected = new Map<number, number>();
      const block = (lbn: number, seed: number) => Buffer.alloc(BS, ((lbn * 7 + seed) % 251) + 1);
      const fh = await open(o.disk('t'), 'r+');
      try {
        const rnd = prng(5);
        for (let lbn = 0; lbn < n; lbn++) expected.set(lbn, 0);
        await fh.write(Buffer.concat(Array.from({ length: 1024 }, (_, i) => block(i, 0))), 0, 1024 * BS, 0);
        for (let c = 1; c < n / 1024; c++) await fh.write(Buffer.concat(Array.from({ length: 1024 }, (_, i) => block(c * 1024 + i, 0))), 0, 1024 * BS, c * 1024 * BS);
        for (let i = 0; i < 3000; i++) {
          const lbn = Math.floor(rnd() * n);
          if (rnd() < 0.5) {
            const seed = 1 + Math.floor(rnd() * 200);
            await fh.write(block(lbn, seed), 0, BS, lbn * BS);
            expected.set(lbn, seed);
          } else {
            const got = Buffer.alloc(BS);
            await fh.read(got, 0, BS, lbn * BS);
            expect(got.equals(block(lbn, expected.get(lbn)!)), `block ${lbn}`).toBe(true);
          }
        }
        await fh.sync();
      } finally {
        await fh.close();
      }
      const st = await o.status();
      expect(st.tableCache.maxBytes).toBe(1024 * 1024);
      expect(st.tableCache.bytes).toBeLessThanOrEqual(1024 * 1024);
      expect(st.tableCache.entries).toBeGreaterThan(1000);
      expect(st.tableCache.found).toBeLessThan(st.tableCache.lookups);
      expect(await o.statusText()).toMatch(/table cache: \d+ entries, [\d.]+[KM]? of 1M; .* lookups since mount found in memory \(full: .*--table-cache/);
      // Every block again after a remount, read in order.
      await o.remount();
      const all = await readFile(o.disk('t'));
      for (let lbn = 0; lbn < n; lbn++) if (!all.subarray(lbn * BS, (lbn + 1) * BS).equals(block(lbn, expected.get(lbn)!))) expect.fail(`block ${lbn} after the remount`);
    } finally {
      await o.teardown();
    }
  });

  it('the -o store=DIR,pool_size=SIZE form mounts with that store and pool', async () => {
    const o = await VdiskMount.unmounted();
    const r0 = await vdiskfs(['create', 'x', '1M', '--store', o.store]);
    expect(r0.code, r0.stderr).toBe(0);
    const o2 = await VdiskMount.unmounted({});
    // Mount o2's mountpoint on o's store through -o (replaceArgs: no --store/--pool-size).
    const r = await vdiskfs(['mount', o2.mp, '-o', `store=${o.store},pool_size=16M`]);
    expect(r.code, r.stderr).toBe(0);
    try {
      expect(await mountTypeOf(o2.mp)).toBe('fuse.vdiskfs');
      expect(await readdir(o2.mp)).toContain('x');
      const st = JSON.parse(await readFile(join(o2.mp, '.vdisk', 'status.json'), 'utf8'));
      expect(st.pool.capacity).toBe(16 * M);
      const df = await sh(`df --block-size=1 --output=size ${o2.mp} | tail -1`);
      expect(Number(df.stdout.trim())).toBe(16 * M);
      const info = JSON.parse(await readFile(join(o.store, 'mounted.json'), 'utf8')) as { pid: number; mountpoint: string };
      expect(info.mountpoint).toBe(o2.mp);
      const u = await vdiskfs(['unmount', o2.mp]);
      expect(u.code, u.stderr).toBe(0);
      expect(await waitForExit(info.pid)).toBe(true);
      expect(await isMountpoint(o2.mp)).toBe(false);
    } finally {
      // o2's teardown knows nothing of o's store: kill through o's mounted.json if it is still there.
      const info = await o.mountInfo();
      if (info && (await isMountpoint(o2.mp))) await sh(`fusermount3 -uz ${o2.mp} || fusermount -uz ${o2.mp}; kill -9 ${info.pid} 2>/dev/null`);
      await o2.teardown();
      await o.teardown();
    }
  });

  it('a second mount of a store that is already mounted is refused, and the first keeps working', async () => {
    const other = await VdiskMount.unmounted();
    const r = await vdiskfs(['mount', other.mp, '--store', m.store]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/in use|locked|mounted/i);
    expect(await isMountpoint(other.mp)).toBe(false);
    expect((await m.mountInfo())!.pid).toBe(m.pid);
    await m.ctlOk('create stillok 1M');
    await writeAt(m.disk('stillok'), 0, randomBuffer(8, 100));
    expect((await readRange(m.disk('stillok'), 0, 100)).equals(randomBuffer(8, 100))).toBe(true);
    await other.teardown();
  });

  it('-f stays in the foreground; SIGTERM flushes and unmounts', async () => {
    const o = await VdiskMount.unmounted();
    const child = spawn(process.execPath, [CLI, 'mount', o.mp, '--store', o.store, '-f'], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<number | null>((res) => child.on('exit', (code) => res(code)));
    try {
      // Wait (bounded) for the mount to appear.
      for (let i = 0; i < 200 && !(await isMountpoint(o.mp)); i++) await sleep(50);
      expect(await isMountpoint(o.mp), stderr).toBe(true);
      expect((await o.mountInfo())!.pid).toBe(child.pid);
      await writeFile(join(o.mp, '.vdisk', 'ctl'), 'create fg 1M\n');
      await writeAt(join(o.mp, 'fg'), 4096, randomBuffer(9, 5000));
      child.kill('SIGTERM');
      expect(await exited).toBe(0);
      expect(await isMountpoint(o.mp)).toBe(false);
      expect(await o.mountInfo()).toBeUndefined(); // removed on a clean stop
      // The data was flushed: mount in the background and read it.
      await o.mount();
      expect((await readRange(o.disk('fg'), 4096, 5000)).equals(randomBuffer(9, 5000))).toBe(true);
    } finally {
      if (child.exitCode === null) child.kill('SIGKILL');
      await o.teardown();
    }
  });

  // Fixed bug, kept as a regression test (src/fuse/nodes.ts, Tree.rendered): status/status.json/history are served from a buffer rendered
  // at open, but the kernel limits reads to the st_size it got from an earlier getattr. When a control
  // command runs between the two (generation bump), the reader gets the new content cut at the old size:
  // truncated, unparsable JSON. Repro: one process loops `create dN 1M` / `delete dN-1` on ctl while
  // another reads status.json (open + read until EOF) and JSON.parse()s it: several % of reads fail.
  it('status.json read while control commands run is never truncated', async () => {
    const script = `
      import { open, writeFile } from 'node:fs/promises';
      const [vdisk] = process.argv.slice(1);
      let done = false, bad = 0, reads = 0, sample = '';
      const writer = (async () => {
        for (let i = 0; i < 200 && bad === 0; i++) {
          await writeFile(vdisk + '/ctl', 'create race' + i + ' 1M\\n');
          if (i > 0) await writeFile(vdisk + '/ctl', 'delete race' + (i - 1) + '\\n');
        }
      })().finally(() => (done = true));
      const readEOF = async (p) => {
        const fh = await open(p, 'r');
        const parts = [];
        for (let pos = 0; ; ) {
          const b = Buffer.alloc(65536);
          const { bytesRead } = await fh.read(b, 0, b.length, pos);
          if (!bytesRead) break;
          parts.push(b.subarray(0, bytesRead));
          pos += bytesRead;
        }
        await fh.close();
        return Buffer.concat(parts).toString();
      };
      while (!done) {
        reads++;
        const t = await readEOF(vdisk + '/status.json');
        try { JSON.parse(t); } catch { bad++; sample = t.slice(-40); }
      }
      await writer;
      console.log(JSON.stringify({ reads, bad, sample }));
    `;
    const r = await nodeScript(script, [m.vdisk]);
    expect(r.code, r.stderr).toBe(0);
    const res = JSON.parse(r.stdout) as { reads: number; bad: number; sample: string };
    expect(res.reads).toBeGreaterThan(0);
    expect(res, 'truncated status.json reads').toMatchObject({ bad: 0 });
    for (const d of (await m.status()).disks) if (d.name.startsWith('race')) await m.ctlOk(`delete ${d.name}`);
  });

  // Fixed bug, kept as a regression test (src/control/commands.ts, runLine): a successful command is recorded in the history verbatim, so a
  // command whose words are separated by a TAB (accepted: words split on \s+) breaks the tab-separated
  // format (time, result, command, message): `printf 'create\ttabbed 1M\n' > ctl` gives a history line with
  // 5 fields, command "create". (Failed commands have control characters replaced by '?'.)
  it('a command containing a TAB keeps the history line at 4 tab-separated fields', async () => {
    await m.ctlOk('create\ttabbed 1M');
    const text = await readFile(join(m.vdisk, 'history'), 'utf8');
    const line = text.trimEnd().split('\n').pop()!;
    await m.ctlOk('delete tabbed');
    expect(line.split('\t')).toHaveLength(4);
  });

  it('mount on a non-existent mountpoint fails with a non-zero exit and a message', async () => {
    const o = await VdiskMount.unmounted();
    const missing = join(o.root, 'does', 'not', 'exist');
    const r = await vdiskfs(['mount', missing, '--store', o.store]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/vdiskfs: .*(exist|no such)/i);
    expect(await o.mountInfo()).toBeUndefined();
    // No daemon was left behind holding the store: it opens offline.
    const l = await vdiskfs(['list', '--store', o.store]);
    expect(l.code, l.stderr).toBe(0);
    await o.teardown();
  });
});
