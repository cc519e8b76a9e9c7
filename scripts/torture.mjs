#!/usr/bin/env node
/**
 * `npm run torture`: long fault and load runs against real mounts of dist/cli/main.js.
 *
 *   crash    SIGKILL the daemon at seeded moments while 3 writers fsync self-checking 4 KiB records;
 *            remount, every acknowledged record must be intact; `check --verify-data` after every round.
 *   random   seeded random operations through the mount (odd offsets/lengths with node and dd, snapshots,
 *            clones, rollbacks, resizes, deletes, clean remounts and SIGKILL remounts after fsync),
 *            every read compared with an in-memory model of each disk and snapshot.
 *   fio      fio --verify=crc32c runs (random + sequential, aligned + unaligned block sizes), verified
 *            again with --verify_only after a remount.
 *   damage   damaged backup images (flipped byte per region, truncations, appended bytes, zeroed ranges,
 *            concatenations, a delta on the wrong base): each must be refused by verify and by both
 *            restore files of the mount (restore --as / --into), and change nothing.
 *   load     several disks, concurrent verified writers and readers for TORTURE_SECONDS, snapshots taken
 *            (and read back) during the load, peak RSS (VmHWM) of the daemon; all data verified after a
 *            remount.
 *
 *   fsx      scripts/fsx.mjs (fsx's operation mix, xfstests generic/127's parameters: -l 262144 -o 65536,
 *            100,000 operations) on a 4 KiB-block and a 64 KiB-block disk, every read checked against a
 *            shadow copy; the region's hash checked again after a remount.
 *
 * Environment: TORTURE_ROUNDS (100), TORTURE_SECONDS (60), TORTURE_QUICK=1 (a few minutes in all),
 * TORTURE_FSX_OPS (100000; quick 5000),
 * TORTURE_SEED (random; printed), TORTURE_FIO_SIZE (256M per job; quick 16M), TORTURE_ONLY=crash,random,...
 * TORTURE_KEEP=1 keeps the temp dir. Output: a summary table on stdout and in
 * /tmp/vdiskfs-torture-summary.md. Exit 0 only if nothing failed and no acknowledged byte was lost.
 *
 * Only asynchronous child processes (this process touches the mount, so it must never block its event
 * loop); every mount is unmounted on success, failure, SIGINT and SIGTERM.
 */
import { execFile, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, open, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { crc32 } from 'node:zlib';

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const CLI = join(REPO, 'dist/cli/main.js');
// fusermount3 (FUSE 3), or plain fusermount where only that is installed.
const FUSERMOUNT = ['/usr/bin/fusermount3', '/bin/fusermount3'].some((p) => existsSync(p)) ? 'fusermount3' : 'fusermount';
const K = 1024;
const M = 1024 * K;

const QUICK = process.env.TORTURE_QUICK === '1';
const ROUNDS = Number(process.env.TORTURE_ROUNDS ?? (QUICK ? 3 : 100));
const SECONDS = Number(process.env.TORTURE_SECONDS ?? (QUICK ? 6 : 60));
const SEED = Number(process.env.TORTURE_SEED ?? Math.floor(Math.random() * 2 ** 31));
const FIO_SIZE = process.env.TORTURE_FIO_SIZE ?? (QUICK ? "8M" : "256M");
const ONLY = new Set((process.env.TORTURE_ONLY ?? 'crash,random,fio,fsx,damage,load').split(',').filter(Boolean));
const FSX_OPS = Number(process.env.TORTURE_FSX_OPS ?? (QUICK ? 5000 : 100_000));
const KEEP = process.env.TORTURE_KEEP === '1';
const SUMMARY = '/tmp/vdiskfs-torture-summary.md';

// ---------------------------------------------------------------------------------------------------------
// Bookkeeping and cleanup

/** mountpoint -> daemon pid (undefined while mounting) */
const mounts = new Map();
const children = new Set();
let root;
let cleaning = false;
let cleanupDone;

function log(...a) {
  console.log(`[${new Date().toISOString().slice(11, 19)}]`, ...a);
}

function cleanup() {
  if (!cleanupDone) {
    cleaning = true;
    cleanupDone = doCleanup();
  }
  return cleanupDone;
}

async function doCleanup() {
  for (const c of children) {
    try {
      c.kill('SIGKILL');
    } catch {
      /* gone */
    }
  }
  for (const [mp, pid] of mounts) {
    if (pid) {
      try {
        process.kill(pid, 'SIGTERM'); // the daemon syncs and unmounts itself
      } catch {
        /* gone */
      }
      await waitForExit(pid, 10_000);
    }
    if (await isMountpoint(mp)) await run(FUSERMOUNT, ['-uz', mp]).catch(() => undefined);
    if (pid && isAlive(pid)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
  }
  mounts.clear();
  if (root && !KEEP) await rm(root, { recursive: true, force: true }).catch(() => undefined);
  else if (root) log(`kept ${root}`);
}

// Last resort if the process exits some other way: signals only (no child processes in an exit handler).
process.on('exit', () => {
  for (const [, pid] of mounts) {
    try {
      if (pid) process.kill(pid, 'SIGTERM');
    } catch {
      /* gone */
    }
  }
});
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(sig, () => {
    log(`${sig}: cleaning up (seed ${SEED})`);
    void cleanup().finally(() => process.exit(130));
  });
}

// ---------------------------------------------------------------------------------------------------------
// Processes

function run(file, args, opts = {}) {
  return new Promise((res, rej) => {
    const child = execFile(file, args, { maxBuffer: 256 * M, encoding: opts.encoding ?? 'utf8', env: opts.env ?? process.env }, (err, stdout, stderr) => {
      children.delete(child);
      if (err && typeof err.code === 'string') return rej(err);
      res({ code: err ? (err.code ?? 1) : 0, signal: err?.signal ?? null, stdout, stderr });
    });
    children.add(child);
    if (opts.input !== undefined) child.stdin.end(opts.input);
    else child.stdin?.end();
  });
}

const cli = (args) => run(process.execPath, [CLI, ...args]);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function isAlive(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return e.code === 'EPERM';
  }
}

async function waitForExit(pid, maxMs = 30_000) {
  const until = Date.now() + maxMs;
  while (isAlive(pid)) {
    if (Date.now() > until) return false;
    await sleep(25);
  }
  return true;
}

async function isMountpoint(dir) {
  const text = await readFile('/proc/self/mountinfo', 'utf8');
  return text.split('\n').some((l) => l.split(' ')[4] === dir);
}

/** Spawn a node ESM snippet; lines of stdout go to onLine; resolves with {code, stdout, stderr}. */
function nodeChild(source, args, onLine) {
  const child = spawn(process.execPath, ['--input-type=module', '-e', source, '--', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(child);
  let stdout = '';
  let stderr = '';
  let buf = '';
  child.stdout.on('data', (d) => {
    const s = d.toString();
    stdout += s;
    if (!onLine) return;
    buf += s;
    let nl;
    while ((nl = buf.indexOf('\n')) >= 0) {
      onLine(buf.slice(0, nl));
      buf = buf.slice(nl + 1);
    }
  });
  child.stderr.on('data', (d) => (stderr += d.toString()));
  const done = new Promise((res) =>
    child.on('close', (code, signal) => {
      children.delete(child);
      res({ code, signal, stdout, stderr });
    }),
  );
  return { child, done };
}

// ---------------------------------------------------------------------------------------------------------
// Mounts

class Mount {
  constructor(name, poolSize) {
    this.dir = join(root, name);
    this.mp = join(this.dir, 'mp');
    this.store = join(this.dir, 'store');
    this.poolSize = poolSize;
    this.pid = undefined;
  }

  async mount() {
    await mkdir(this.mp, { recursive: true });
    mounts.set(this.mp, undefined);
    const r = await cli(['mount', this.mp, '--store', this.store, ...(this.poolSize ? ['--pool-size', this.poolSize] : [])]);
    if (r.code !== 0) throw new Error(`mount failed (exit ${r.code}): ${r.stderr}`);
    this.pid = JSON.parse(await readFile(join(this.store, 'mounted.json'), 'utf8')).pid;
    mounts.set(this.mp, this.pid);
  }

  /** Clean unmount: SIGTERM (the daemon syncs, unmounts, exits). */
  async stop() {
    const pid = this.pid;
    process.kill(pid, 'SIGTERM');
    if (!(await waitForExit(pid))) throw new Error(`daemon ${pid} still alive 30 s after SIGTERM`);
    if (await isMountpoint(this.mp)) throw new Error(`${this.mp} still mounted after the daemon exited`);
    this.pid = undefined;
    mounts.delete(this.mp);
  }

  async kill9() {
    const pid = this.pid;
    process.kill(pid, 'SIGKILL');
    await waitForExit(pid);
    await run(FUSERMOUNT, ['-uz', this.mp]);
    this.pid = undefined;
    mounts.delete(this.mp);
  }

  disk(n) {
    return join(this.mp, n);
  }

  get vdisk() {
    return join(this.mp, '.vdisk');
  }

  /** One write to ctl; resolves to 'OK' or the errno code. */
  async ctl(line) {
    let fh;
    try {
      fh = await open(join(this.vdisk, 'ctl'), 'w');
      await fh.write(line + '\n');
      return 'OK';
    } catch (e) {
      return e.code ?? String(e);
    } finally {
      await fh?.close().catch(() => undefined);
    }
  }

  async ctlOk(line) {
    const r = await this.ctl(line);
    if (r !== 'OK') throw new Error(`ctl '${line}' failed: ${r}`);
  }

  async status() {
    return JSON.parse(await readFile(join(this.vdisk, 'status.json'), 'utf8'));
  }

  vmHWM() {
    return readFile(`/proc/${this.pid}/status`, 'utf8').then((t) => Number(/VmHWM:\s+(\d+) kB/.exec(t)?.[1] ?? 0) * K, () => 0);
  }

  /** `vdiskfs check --verify-data` (every block read back against its checksum); errors throw, leaks are counted and repaired. */
  async check(stats) {
    const r = await cli(['check', '--verify-data', '--store', this.store]);
    stats.checks++;
    // exit codes as qemu-img check's: 0 clean, 1 not completed, 2 errors, 3 leaks only
    if (![0, 3].includes(r.code) || !/^0 errors/m.test(r.stdout)) {
      stats.errors++;
      throw new Error(`check found errors in ${this.store} (exit ${r.code}):\n${r.stdout}${r.stderr}`);
    }
    if (r.code === 3) {
      stats.leaks++;
      const fix = await cli(['check', '--store', this.store, '--repair']);
      if (fix.code !== 0) throw new Error(`check --repair failed:\n${fix.stdout}${fix.stderr}`);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// Data helpers

function prng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function randBuf(rnd, n) {
  const b = Buffer.allocUnsafe(n);
  let i = 0;
  for (; i + 4 <= n; i += 4) b.writeUInt32LE((rnd() * 2 ** 32) >>> 0, i);
  for (; i < n; i++) b[i] = (rnd() * 256) | 0;
  return b;
}

async function pread(path, off, len) {
  const fh = await open(path, 'r');
  try {
    const b = Buffer.alloc(len);
    let got = 0;
    while (got < len) {
      const { bytesRead } = await fh.read(b, got, Math.min(len - got, 4 * M), off + got);
      if (bytesRead === 0) break;
      got += bytesRead;
    }
    return b.subarray(0, got);
  } finally {
    await fh.close();
  }
}

async function pwrite(path, off, data, fsync = false) {
  const fh = await open(path, 'r+');
  try {
    let done = 0;
    while (done < data.length) done += (await fh.write(data, done, Math.min(data.length - done, 4 * M), off + done)).bytesWritten;
    if (fsync) await fh.sync();
  } finally {
    await fh.close();
  }
}

async function fsyncFile(path) {
  const fh = await open(path, 'r+');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

const sha = (b) => createHash('sha256').update(b).digest('hex');

function firstDiff(a, b) {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return a.length === b.length ? -1 : n;
}

/** Self-checking 4 KiB record (same layout as test/integration/faults.test.ts): header + derived payload. */
const RECORD_SRC = `
  function record(magic, a, b, c) {
    const buf = Buffer.alloc(4096);
    let x = ((a * 73856093) ^ (b * 19349663) ^ (c * 83492791) ^ 0x5bd1e995) >>> 0 || 1;
    for (let i = 64; i < 4096; i += 4) { x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0; buf.writeUInt32LE(x, i); }
    buf.write(magic, 0, 'latin1');
    buf.writeUInt32LE(a, 8); buf.writeUInt32LE(b, 12); buf.writeUInt32LE(c, 16);
    const payload = buf.subarray(64);
    buf.writeUInt32LE(crc32(payload), 20);
    createHash('sha256').update(payload).digest().copy(buf, 24);
    return buf;
  }
  function selfCheck(buf) {
    const payload = buf.subarray(64);
    return buf.readUInt32LE(20) === crc32(payload) && createHash('sha256').update(payload).digest().equals(buf.subarray(24, 56));
  }
`;
// eslint-disable-next-line no-new-func
const { record, selfCheck } = new Function('crc32', 'createHash', `${RECORD_SRC}; return { record, selfCheck };`)(crc32, createHash);

// ---------------------------------------------------------------------------------------------------------
// Results

const results = [];
function newStats(phase) {
  const s = { phase, checks: 0, operations: 0, errors: 0, detected: '', bytesLost: 0, leaks: 0, peakRss: 0, seconds: 0, notes: [], failed: null };
  results.push(s);
  return s;
}

// ---------------------------------------------------------------------------------------------------------
// Phase 1: crash rounds

const CRASH_WRITER = `
  import { open } from 'node:fs/promises';
  import { createHash } from 'node:crypto';
  import { crc32 } from 'node:zlib';
  ${RECORD_SRC}
  const [file, w, r, base, count] = process.argv.slice(1);
  const fh = await open(file, 'r+');
  for (let i = 0; i < Number(count); i++) {
    const rec = record('VDREC001', Number(w), i, Number(r));
    let done = 0;
    while (done < rec.length) done += (await fh.write(rec, done, rec.length - done, Number(base) + i * 4096 + done)).bytesWritten;
    await fh.sync();
    process.stdout.write('ack ' + i + '\\n');
  }
  await fh.close();
`;

async function crashPhase() {
  const st = newStats('crash');
  const rnd = prng(SEED ^ 0xc4a5);
  const m = new Mount('crash');
  await m.mount();
  const WRITERS = 3;
  const AREA = 2000; // records per writer per round at most
  const AREAS = 4; // rounds reuse areas cyclically: later rounds overwrite acknowledged records
  const REGION = AREAS * AREA * 4096 + 64 * K;
  await m.ctlOk(`create c64 ${Math.ceil((WRITERS * REGION) / M) + 1}M`);
  await m.ctlOk(`create c4 ${Math.ceil((WRITERS * REGION) / M) + 1}M block-size=4K`);
  /** "disk:offset" -> expected record (the last acknowledged one), or null when a torn/unacknowledged write makes it unknown */
  const expected = new Map();
  for (let round = 0; round < ROUNDS; round++) {
    const disk = round % 2 ? 'c4' : 'c64';
    const shift = [0, 512, 1234, 4095][round % 4];
    const area = round % AREAS;
    const ws = [];
    for (let w = 0; w < WRITERS; w++) {
      const base = w * REGION + area * AREA * 4096 + shift;
      const acks = [];
      const child = nodeChild(CRASH_WRITER, [m.disk(disk), String(w), String(round), String(base), String(AREA)], (line) => {
        const mm = /^ack (\d+)$/.exec(line);
        if (mm) acks.push(Number(mm[1]));
      });
      ws.push({ w, base, acks, ...child });
    }
    const until = Date.now() + 60_000;
    while (ws.some((x) => x.acks.length === 0) && Date.now() < until) await sleep(5);
    if (ws.some((x) => x.acks.length === 0)) throw new Error(`crash round ${round}: a writer never acknowledged: ${ws.map((x) => x.child.exitCode + ' ' + x.stderr).join(' | ')}`);
    await sleep(Math.floor(rnd() * 1500));
    await m.kill9();
    await Promise.race([Promise.all(ws.map((x) => x.done)), sleep(15_000)]);
    for (const x of ws) if (x.child.exitCode === null) x.child.kill('SIGKILL');
    await Promise.all(ws.map((x) => x.done));
    for (const x of ws) {
      const last = x.acks.length ? Math.max(...x.acks) : -1;
      for (let i = 0; i <= last; i++) expected.set(`${disk}:${x.base + i * 4096}`, { rec: record('VDREC001', x.w, i, round), round, w: x.w, seq: i });
      // The record in flight at the kill may be torn, and overlaps one or two earlier records (shift changes): unknown.
      const inflight = x.base + (last + 1) * 4096;
      for (const [k] of expected) {
        const [d, o] = k.split(':');
        if (d === disk && Math.abs(Number(o) - inflight) < 4096) expected.set(k, null);
      }
      st.operations += x.acks.length;
    }
    // Earlier rounds' records that this round's acknowledged records overlapped are replaced; the
    // ones overlapped partially are unknown only if torn, which they cannot be (acked = fsync'd whole).
    for (const x of ws) {
      const last = x.acks.length ? Math.max(...x.acks) : -1;
      const lo = x.base;
      const hi = x.base + (last + 1) * 4096;
      for (const [k, v] of expected) {
        if (!v) continue;
        const [d, o] = k.split(':');
        const off = Number(o);
        if (d !== disk || v.round === round) continue;
        if (off + 4096 > lo && off < hi) expected.set(k, null); // partly overwritten by a newer acknowledged record
      }
    }
    await m.mount();
    let lost = 0;
    const msgs = [];
    for (const [k, v] of expected) {
      if (!v) continue;
      const [d, o] = k.split(':');
      const got = await pread(m.disk(d), Number(o), 4096);
      st.checks++;
      if (!got.equals(v.rec)) {
        lost++;
        if (msgs.length < 5) msgs.push(`${k} (writer ${v.w} round ${v.round} seq ${v.seq}): ${got.subarray(0, 8).toString('latin1') === 'VDREC001' ? `holds writer ${got.readUInt32LE(8)} seq ${got.readUInt32LE(12)} round ${got.readUInt32LE(16)}, self-check ${selfCheck(got) ? 'ok' : 'BAD'}` : 'no record'}`);
      }
    }
    st.bytesLost += lost * 4096;
    if (lost) {
      st.errors += lost;
      throw new Error(`crash round ${round} (seed ${SEED}): ${lost} acknowledged records lost:\n${msgs.join('\n')}`);
    }
    await m.stop();
    await m.check(st);
    await m.mount();
    log(`crash round ${round + 1}/${ROUNDS}: ${ws.map((x) => x.acks.length).join('+')} records acknowledged, ${[...expected.values()].filter(Boolean).length} verified`);
  }
  st.peakRss = Math.max(st.peakRss, await m.vmHWM());
  await m.stop();
  await m.check(st);
  if (st.leaks) st.notes.push(`${st.leaks} check(s) found leaked pool space (repaired)`);
}

// ---------------------------------------------------------------------------------------------------------
// Phase 2: seeded random operations against an in-memory model

async function randomPhase() {
  const st = newStats('random');
  const seed = SEED ^ 0x7a11;
  const rnd = prng(seed);
  const pick = (a) => a[Math.floor(rnd() * a.length)];
  const int = (lo, hi) => lo + Math.floor(rnd() * (hi - lo + 1));
  const m = new Mount('random');
  await m.mount();
  const scratch = join(m.dir, 'scratch');
  await mkdir(scratch, { recursive: true });
  /** name -> { data: Buffer, bs, snaps: Map<name, Buffer>, origin?: [disk, snap] } */
  const disks = new Map();
  let nextName = 0;
  const ops = QUICK ? 60 : ROUNDS * 30;
  const history = [];
  const fail = (msg) => {
    st.errors++;
    const dn = /\b(r\d+)\b/.exec(msg)?.[1];
    throw new Error(`random torture failed at op #${history.length} (seed ${SEED}; phase seed ${seed}): ${msg}\nlast ops:\n${history.slice(-12).join("\n")}${dn ? `\nops on ${dn}:\n${history.filter((h) => new RegExp(`\\b${dn}\\b`).test(h)).slice(-40).join("\n")}` : ""}`);
  };
  const createDisk = async () => {
    const name = `r${nextName++}`;
    const bs = pick([4 * K, 16 * K, 64 * K]);
    const size = pick([1, 3, 8, 17]) * M + pick([0, 512, 64 * K]);
    await m.ctlOk(`create ${name} ${size} block-size=${bs}`);
    disks.set(name, { data: Buffer.alloc(size), bs, snaps: new Map() });
  };
  const clonesOf = (name, snap) => [...disks.entries()].filter(([, d]) => d.origin && d.origin[0] === name && (snap === undefined || d.origin[1] === snap)).map(([n]) => n);
  const compareRange = async (name, off, len, what) => {
    const d = disks.get(name);
    const got = await pread(m.disk(name), off, len);
    const want = d.data.subarray(off, Math.min(off + len, d.data.length));
    st.checks++;
    const diff = firstDiff(got, want);
    if (diff >= 0) {
      st.bytesLost += 1;
      fail(`${what}: ${name} differs from the model at byte ${off + diff} (read ${off}+${len}, got ${got.length} bytes)`);
    }
  };
  const compareAll = async (what) => {
    for (const [name, d] of disks) {
      const got = await pread(m.disk(name), 0, d.data.length);
      st.checks++;
      if (!got.equals(d.data)) fail(`${what}: disk ${name} differs from the model at byte ${firstDiff(got, d.data)}`);
      for (const [s, b] of d.snaps) {
        const g = await pread(join(m.vdisk, 'snapshots', name, s), 0, b.length);
        st.checks++;
        if (!g.equals(b)) fail(`${what}: snapshot ${name}@${s} differs from the model at byte ${firstDiff(g, b)}`);
      }
      const size = (await stat(m.disk(name))).size;
      if (size !== d.data.length) fail(`${what}: ${name} has size ${size}, the model ${d.data.length}`);
    }
  };

  await createDisk();
  await createDisk();
  for (let i = 0; i < ops; i++) {
    const names = [...disks.keys()];
    const name = pick(names);
    const d = disks.get(name);
    const r = rnd();
    let desc;
    if (r < 0.35) {
      // Write at an odd offset/length: node pwrite or dd with an odd block size; sometimes zeros (frees blocks).
      const len = Math.min(d.data.length, pick([1, 511, 4095, 4097, int(1, 300 * K), int(60 * K, 70 * K), d.bs, 3 * d.bs + 1]));
      const off = int(0, Math.max(0, d.data.length - len));
      const data = rnd() < 0.12 ? Buffer.alloc(len) : randBuf(rnd, len);
      if (rnd() < 0.3) {
        const src = join(scratch, 'dd-src');
        await writeFile(src, data);
        const bs = pick([512, 3000, 65536, 131072]);
        const res = await run('dd', [`if=${src}`, `of=${m.disk(name)}`, `bs=${bs}`, `seek=${off}`, 'oflag=seek_bytes', 'conv=notrunc', 'status=none']);
        if (res.code !== 0) fail(`dd write ${name} ${off}+${len}: ${res.stderr}`);
        desc = `dd write ${name} ${off}+${len} bs=${bs}`;
      } else {
        await pwrite(m.disk(name), off, data);
        desc = `write ${name} ${off}+${len}`;
      }
      data.copy(d.data, off);
      st.operations++;
    } else if (r < 0.55) {
      const len = int(1, 400 * K);
      const off = int(0, d.data.length - 1);
      desc = `read ${name} ${off}+${len}`;
      history.push(desc);
      if (rnd() < 0.3) {
        const res = await run('dd', [`if=${m.disk(name)}`, 'bs=7777', `skip=${off}`, `count=${len}`, 'iflag=skip_bytes,count_bytes', 'status=none'], { encoding: 'buffer' });
        const want = d.data.subarray(off, Math.min(off + len, d.data.length));
        st.checks++;
        if (res.code !== 0 || !res.stdout.equals(want)) fail(`dd read ${name} ${off}+${len} differs at ${firstDiff(res.stdout, want)} (dd exit ${res.code}, got ${res.stdout.length} bytes, model size ${d.data.length}: ${res.stderr})`);
      } else await compareRange(name, off, len, desc);
      st.operations++;
      continue;
    } else if (r < 0.63 && d.snaps.size < 4) {
      const snap = `s${i}`;
      await m.ctlOk(`snapshot ${name} ${snap}`);
      d.snaps.set(snap, Buffer.from(d.data));
      desc = `snapshot ${name} ${snap}`;
      st.operations++;
    } else if (r < 0.68 && d.snaps.size) {
      const snap = pick([...d.snaps.keys()]);
      const off = int(0, d.snaps.get(snap).length - 1);
      const len = int(1, 200 * K);
      const got = await pread(join(m.vdisk, 'snapshots', name, snap), off, len);
      const want = d.snaps.get(snap).subarray(off, off + len);
      st.checks++;
      if (!got.equals(want)) fail(`snapshot read ${name}@${snap} ${off}+${len} differs at ${firstDiff(got, want)}`);
      desc = `read snapshot ${name}@${snap}`;
      st.operations++;
    } else if (r < 0.74 && d.snaps.size) {
      const snap = pick([...d.snaps.keys()]);
      await m.ctlOk(`rollback ${name} ${snap}`);
      d.data = Buffer.from(d.snaps.get(snap));
      desc = `rollback ${name} ${snap}`;
      st.operations++;
    } else if (r < 0.79 && d.snaps.size && disks.size < 8) {
      const snap = pick([...d.snaps.keys()]);
      const nn = `r${nextName++}`;
      await m.ctlOk(`clone ${name} ${snap} ${nn}`);
      disks.set(nn, { data: Buffer.from(d.snaps.get(snap)), bs: d.bs, snaps: new Map(), origin: [name, snap] });
      desc = `clone ${name} ${snap} ${nn}`;
      st.operations++;
    } else if (r < 0.83 && d.snaps.size) {
      const snap = pick([...d.snaps.keys()]);
      const res = await m.ctl(`delete-snapshot ${name} ${snap}`);
      const busy = clonesOf(name, snap).length > 0;
      if (busy ? res !== 'EBUSY' : res !== 'OK') fail(`delete-snapshot ${name} ${snap}: ${res}, expected ${busy ? 'EBUSY' : 'OK'}`);
      if (!busy) d.snaps.delete(snap);
      desc = `delete-snapshot ${name} ${snap} -> ${res}`;
      st.operations++;
    } else if (r < 0.87) {
      // Resize: grow, or shrink (the model drops the tail; regrowing reads zeros).
      const size = Math.min(40 * M, Math.max(512, Math.round((d.data.length * (0.5 + rnd())) / 512) * 512));
      await m.ctlOk(`resize ${name} ${size}`);
      const nd = Buffer.alloc(size);
      d.data.copy(nd, 0, 0, Math.min(size, d.data.length));
      d.data = nd;
      desc = `resize ${name} ${size}`;
      st.operations++;
    } else if (r < 0.9) {
      if (disks.size > 2) {
        const res = await m.ctl(`delete ${name} -r`);
        const busy = clonesOf(name).length > 0;
        if (busy ? res !== 'EBUSY' : res !== 'OK') fail(`delete ${name} -r: ${res}, expected ${busy ? 'EBUSY' : 'OK'}`);
        if (!busy) disks.delete(name);
        desc = `delete ${name} -r -> ${res}`;
      } else {
        await createDisk();
        desc = 'create';
      }
      st.operations++;
    } else if (r < 0.92 && disks.size < 8) {
      await createDisk();
      desc = 'create';
      st.operations++;
    } else if (r < 0.96) {
      await m.stop();
      await m.check(st);
      await m.mount();
      desc = 'remount';
      history.push(desc);
      await compareAll('after a remount');
      st.operations++;
      continue;
    } else {
      // fsync every disk, then SIGKILL: nothing may be lost.
      for (const n of disks.keys()) await fsyncFile(m.disk(n));
      await m.kill9();
      await m.mount();
      desc = 'fsync all + SIGKILL + remount';
      history.push(desc);
      await compareAll('after fsync + SIGKILL');
      st.operations++;
      continue;
    }
    history.push(desc);
    // After every mutation: a random read of the touched disk (if it still exists).
    if (disks.has(name)) {
      const dd2 = disks.get(name);
      const off = int(0, dd2.data.length - 1);
      await compareRange(name, off, int(1, 128 * K), `check after ${desc}`);
    }
    if (i % 50 === 49) log(`random: ${i + 1}/${ops} operations`);
  }
  await compareAll('at the end');
  st.peakRss = Math.max(st.peakRss, await m.vmHWM());
  await m.stop();
  await m.check(st);
  st.notes.push(`${history.length} ops on up to ${nextName} disks (phase seed ${seed})`);
}

// ---------------------------------------------------------------------------------------------------------
// Phase 3: fio verify

async function fioPhase() {
  const st = newStats('fio');
  if ((await run('bash', ['-c', 'command -v fio'])).code !== 0) {
    st.notes.push('SKIPPED: fio not installed (scripts/setup.sh installs it)');
    log('fio: SKIPPED, fio is not installed');
    return;
  }
  const m = new Mount('fio');
  await m.mount();
  const size = FIO_SIZE;
  const bytes = Number(/^(\d+)/.exec(size)[1]) * { K, M, G: 1024 * M }[size.slice(-1).toUpperCase()];
  const jobs = [
    { name: 'rand4k', rw: 'randwrite', bs: '4k', disk: 'f64' },
    { name: 'rand12k', rw: 'randwrite', bs: '12k', disk: 'f4' },
    { name: 'seq128k', rw: 'write', bs: '128k', disk: 'f64' },
    { name: 'seq12k-odd', rw: 'write', bs: '12k', disk: 'f64', shift: 512 },
    { name: 'rand64k', rw: 'randwrite', bs: '64k', disk: 'f4' },
  ];
  const diskSize = (jobs.length + 1) * bytes + M;
  await m.ctlOk(`create f64 ${diskSize}`);
  await m.ctlOk(`create f4 ${diskSize} block-size=4K`);
  const args = (j, i, extra) => [
    `--name=${j.name}`,
    `--filename=${m.disk(j.disk)}`,
    `--rw=${j.rw}`,
    `--bs=${j.bs}`,
    `--offset=${i * bytes + (j.shift ?? 0)}`,
    `--size=${Math.floor(bytes / (Number(j.bs.slice(0, -1)) * K)) * Number(j.bs.slice(0, -1)) * K}`,
    '--ioengine=psync',
    '--verify=crc32c',
    `--aux-path=${tmpdir()}`, // fio's verify state files, not in the working directory
    `--randseed=${SEED}`,
    '--fallocate=none',
    '--verify_fatal=1',
    '--output-format=terse',
    '--terse-version=3',
    ...extra,
  ];
  const bad = /verify: bad|verify failed|bad magic|bad header/i;
  for (const [i, j] of jobs.entries()) {
    const r = await run('fio', args(j, i, ['--do_verify=1']));
    st.operations++;
    st.checks++;
    if (r.code !== 0 || bad.test(r.stdout + r.stderr)) {
      st.errors++;
      throw new Error(`fio ${j.name} failed (seed ${SEED}):\n${r.stdout}${r.stderr}`);
    }
    log(`fio ${j.name}: written and verified`);
  }
  st.peakRss = Math.max(st.peakRss, await m.vmHWM());
  await m.stop();
  await m.check(st);
  await m.mount();
  for (const [i, j] of jobs.entries()) {
    const r = await run('fio', args(j, i, ['--verify_only=1']));
    st.checks++;
    const readKiB = Number((r.stdout.trim().split('\n').pop() ?? '').split(';')[6]);
    if (r.code !== 0 || bad.test(r.stdout + r.stderr) || !(readKiB > 0)) {
      st.errors++;
      st.bytesLost += bytes;
      throw new Error(`fio --verify_only ${j.name} after remount failed (seed ${SEED}):\n${r.stdout}${r.stderr}`);
    }
  }
  log('fio: all jobs verified again after a remount');
  st.peakRss = Math.max(st.peakRss, await m.vmHWM());
  await m.stop();
  await m.check(st);
  st.notes.push(`${jobs.length} jobs x ${size}: ${jobs.map((j) => j.name).join(', ')}`);
}

// ---------------------------------------------------------------------------------------------------------
// Phase: fsx (scripts/fsx.mjs)

async function fsxPhase() {
  const st = newStats('fsx');
  const m = new Mount('fsx');
  await m.mount();
  const runs = [
    { disk: 'x4', create: 'create x4 1M block-size=4K', seed: 191110531 },
    { disk: 'x64', create: 'create x64 1M', seed: SEED },
  ];
  const finals = new Map();
  for (const r of runs) {
    await m.ctlOk(r.create);
    const out = await run(process.execPath, [join(REPO, 'scripts/fsx.mjs'), m.disk(r.disk), '-N', String(FSX_OPS), '-S', String(r.seed)]);
    st.operations += FSX_OPS;
    st.checks++;
    if (out.code !== 0) {
      st.errors++;
      throw new Error(`fsx on ${r.disk} failed:\n${out.stdout}${out.stderr}`);
    }
    finals.set(r.disk, /^final (\w+)$/m.exec(out.stdout)[1]);
    log(`fsx ${r.disk}: ${out.stdout.split('\n')[0]}`);
    st.notes.push(`${r.disk}: ${out.stdout.split('\n')[0].replace(/^fsx: /, '')}`);
  }
  await m.stop();
  await m.check(st);
  await m.mount();
  for (const [disk, sha] of finals) {
    const got = createHash('sha256').update(await pread(m.disk(disk), 0, 262144)).digest('hex');
    st.checks++;
    if (got !== sha) {
      st.errors++;
      st.bytesLost += 262144;
      throw new Error(`fsx region of ${disk} differs after a remount`);
    }
  }
  await m.stop();
  await m.check(st);
}

// ---------------------------------------------------------------------------------------------------------
// Phase 4: damaged backup images

const u64 = (b, o) => Number(b.readBigUInt64BE(o));

function damagedVariants(good, rnd) {
  const slots = u64(good, 40);
  const zeros = u64(good, 48);
  const bs = good.readUInt32BE(28);
  const dataOff = u64(good, 88);
  const groupOff = u64(good, 96);
  const trailerOff = u64(good, 104);
  const out = [];
  const flip = (name, off) => {
    const b = Buffer.from(good);
    b[off] ^= 1 << Math.floor(rnd() * 8);
    out.push({ name: `flip ${name} @${off}`, data: b });
  };
  const regions = [
    ['magic', 0, 8],
    ['version', 8, 4],
    ['kind', 24, 4],
    ['blockSize', 28, 4],
    ['virtualSize', 32, 8],
    ['slotCount', 40, 8],
    ['header offsets', 88, 32],
    ['header rest', 120, 4096 - 120],
    ['lbn table', 4096, 8 * slots],
    ['pbn table', 4096 + 8 * slots, 8 * slots],
    ...(zeros ? [['zero list', 4096 + 16 * slots, 8 * zeros]] : []),
    ['first data slot', dataOff, bs],
    ['middle data slot', dataOff + Math.floor(slots / 2) * bs, bs],
    ['last data slot', dataOff + (slots - 1) * bs, bs],
    ['group table', groupOff, trailerOff - groupOff],
    ['trailer', trailerOff, 64],
  ];
  for (const [name, off, len] of regions) flip(name, off + Math.floor(rnd() * len));
  for (const cut of [good.length - 1, good.length - 64, trailerOff, groupOff, dataOff + bs + 7, dataOff, 4096, 100, 0]) out.push({ name: `truncated to ${cut}`, data: good.subarray(0, cut) });
  out.push({ name: 'appended 1 byte', data: Buffer.concat([good, Buffer.from([0])]) });
  out.push({ name: 'appended 4096 bytes', data: Buffer.concat([good, randBuf(rnd, 4096)]) });
  for (const [name, off, len] of [
    ['zeroed data range', dataOff + 100, 3000],
    ['zeroed whole slot', dataOff + bs, bs],
    ['zeroed tables', 4096, 16],
    ['zeroed trailer', trailerOff, 64],
    ['zeroed header', 0, 4096],
  ]) {
    const b = Buffer.from(good);
    b.fill(0, off, off + len);
    if (!b.equals(good)) out.push({ name, data: b });
  }
  out.push({ name: 'concatenated with itself', data: Buffer.concat([good, good]) });
  return out;
}

async function damagePhase() {
  const st = newStats('damage');
  const rnd = prng(SEED ^ 0xda3a);
  const m = new Mount('damage');
  await m.mount();
  const work = join(m.dir, 'work');
  await mkdir(work, { recursive: true });
  await m.ctlOk('create src 48M block-size=16K');
  for (let i = 0; i < 8; i++) await pwrite(m.disk('src'), Math.floor(rnd() * 46 * M), randBuf(rnd, 100 * K + i * 999));
  await m.ctlOk('snapshot src a');
  for (let i = 0; i < 4; i++) await pwrite(m.disk('src'), Math.floor(rnd() * 46 * M), randBuf(rnd, 64 * K + 5));
  await pwrite(m.disk('src'), 0, Buffer.alloc(64 * K)); // a hole in b where a had data (if any)
  await m.ctlOk('snapshot src b');
  const full = await readFile(join(m.vdisk, 'copies/src/a'));
  const delta = await readFile(join(m.vdisk, 'deltas/src/a..b'));
  // Targets: tgt holds other content of the same geometry; tgtA is src@a restored (the right base for the delta).
  await m.ctlOk('create tgt 48M block-size=16K');
  await pwrite(m.disk('tgt'), 5 * M, randBuf(rnd, 300 * K));
  await writeFile(join(work, 'full.img'), full);
  await writeFile(join(work, 'delta.img'), delta);
  const ddTo = (src, dst) => run('dd', [`if=${src}`, `of=${dst}`, 'bs=1M', 'status=none']);
  // dd into import/ or restore/ (what `vdiskfs restore` does on a mounted store). An empty file cannot go
  // that way: opening and closing a restore file without writing is no image at all (shells and dd dup
  // and close descriptors), so dd "succeeds" doing nothing; the CLI restore reports the empty input.
  const restoreVia = (file, length, how, name) =>
    length === 0 ? cli(['restore', file, how, name, '--store', m.store]) : ddTo(file, join(m.vdisk, how === '--as' ? 'import' : 'restore', name));
  let r = await ddTo(join(work, 'full.img'), join(m.vdisk, 'import', 'tgtA'));
  if (r.code !== 0) throw new Error(`good import failed: ${r.stderr}`);
  const v = await cli(['verify', join(work, 'full.img')]);
  if (v.code !== 0) throw new Error(`the good image does not verify: ${v.stdout}${v.stderr}`);
  const variants = damagedVariants(full, rnd).map((x) => ({ ...x, expect: { verify: true, as: true, into: 'tgt' } }));
  for (const x of damagedVariants(delta, rnd).slice(0, QUICK ? 6 : 1000)) variants.push({ ...x, name: `delta: ${x.name}`, expect: { verify: true, as: false, into: 'tgtA' } });
  // A good delta on the wrong base: the image is fine (verify passes); applying it to tgt must be refused.
  variants.push({ name: 'delta a..b on the wrong base (tgt)', data: delta, expect: { verify: false, as: false, into: 'tgt' } });
  variants.push({ name: 'delta a..b on a disk that never had a snapshot (src live)', data: delta, expect: { verify: false, as: false, into: 'fresh' } });
  variants.push({ name: 'full + delta concatenated', data: Buffer.concat([full, delta]), expect: { verify: true, as: true, into: 'tgt' } });
  await m.ctlOk('create fresh 48M block-size=16K');
  const list = QUICK ? variants.filter((_, i) => i % 3 === 0 || i >= variants.length - 3) : variants;

  const before = async (full) => {
    const s = await m.status();
    const shas = {};
    for (const d of s.disks) shas[d.name] = full ? sha(await pread(m.disk(d.name), 0, d.size)) : d.allocatedBytes;
    return { used: s.pool.usedBytes, names: s.disks.map((d) => d.name).join(','), shas: JSON.stringify(shas) };
  };
  const refFull = await before(true);
  const ref = await before(false);
  let expected = 0;
  let detected = 0;
  const missed = [];
  for (const [i, x] of list.entries()) {
    const file = join(work, `v${i}.img`);
    await writeFile(file, x.data);
    if (x.expect.verify) {
      expected++;
      const r1 = await cli(['verify', file]);
      st.checks++;
      if (r1.code !== 0) detected++;
      else missed.push(`verify accepted: ${x.name}`);
    }
    if (x.expect.as) {
      expected++;
      const r2 = await restoreVia(file, x.data.length, '--as', 'dmg');
      st.checks++;
      const appeared = await stat(m.disk('dmg')).then(() => true, () => false);
      if (r2.code !== 0 && !appeared) detected++;
      else missed.push(`restore --as accepted: ${x.name}`);
      if (appeared) await m.ctl('delete dmg -r');
    }
    if (x.expect.into) {
      expected++;
      const r3 = await restoreVia(file, x.data.length, '--into', x.expect.into);
      st.checks++;
      if (r3.code !== 0) detected++;
      else missed.push(`restore --into ${x.expect.into} accepted: ${x.name}`);
    }
    st.operations++;
    const now = await before(i === list.length - 1);
    if (i === list.length - 1) Object.assign(ref, refFull);
    st.checks++;
    if (now.used !== ref.used || now.names !== ref.names || now.shas !== ref.shas) {
      st.errors++;
      missed.push(`state changed after: ${x.name} (pool ${ref.used} -> ${now.used}; disks ${ref.names} -> ${now.names}; contents ${now.shas === ref.shas ? 'same' : 'CHANGED'})`);
      break;
    }
  }
  // The good delta on the right base still applies, and the result equals src@b.
  r = await ddTo(join(work, 'delta.img'), join(m.vdisk, 'restore', 'tgtA'));
  st.checks++;
  const want = await pread(join(m.vdisk, 'snapshots/src/b'), 0, 48 * M);
  const got = await pread(m.disk('tgtA'), 0, 48 * M);
  if (r.code !== 0 || !got.equals(want)) {
    st.errors++;
    missed.push(`the good delta on the right base: ${r.code !== 0 ? r.stderr : `differs at ${firstDiff(got, want)}`}`);
  }
  st.peakRss = Math.max(st.peakRss, await m.vmHWM());
  await m.stop();
  await m.check(st);
  st.detected = `${detected}/${expected}`;
  st.notes.push(`${list.length} damaged/misapplied images x (verify, restore --as, restore --into)`);
  if (missed.length) {
    st.errors += missed.length;
    for (const x of missed) st.notes.push(`UNDETECTED: ${x}`);
    log(`damage: ${missed.length} cases not detected:\n  ${missed.join('\n  ')}`);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Phase 5: load

const LOAD_WRITER = `
  import { open } from 'node:fs/promises';
  import { createHash } from 'node:crypto';
  import { crc32 } from 'node:zlib';
  ${RECORD_SRC}
  const [file, w, base, slots, seconds, seed] = process.argv.slice(1).map((x, i) => (i === 0 ? x : Number(x)));
  let a = seed >>> 0;
  const rnd = () => { a = (a + 0x6d2b79f5) >>> 0; let t = a; t = Math.imul(t ^ (t >>> 15), t | 1); t ^= t + Math.imul(t ^ (t >>> 7), t | 61); return ((t ^ (t >>> 14)) >>> 0) / 4294967296; };
  const fh = await open(file, 'r+');
  const model = new Map();
  let seq = 0, writes = 0, checks = 0, errors = 0;
  const msgs = [];
  const end = Date.now() + seconds * 1000;
  while (Date.now() < end) {
    const slot = Math.floor(rnd() * slots);
    const n = 1 + Math.floor(rnd() * 8); // 1..8 consecutive records in one write
    const bufs = [];
    for (let i = 0; i < n && slot + i < slots; i++) { seq++; bufs.push(record('VDLOAD01', w, seq, slot + i)); model.set(slot + i, seq); }
    const buf = Buffer.concat(bufs);
    await fh.write(buf, 0, buf.length, base + slot * 4096);
    writes++;
    if (rnd() < 0.05) await fh.sync();
    if (rnd() < 0.25) {
      const s = [...model.keys()][Math.floor(rnd() * model.size)];
      const got = Buffer.alloc(4096);
      await fh.read(got, 0, 4096, base + s * 4096);
      checks++;
      if (!got.equals(record('VDLOAD01', w, model.get(s), s))) { errors++; if (msgs.length < 5) msgs.push('slot ' + s + ' holds seq ' + got.readUInt32LE(12)); }
    }
  }
  await fh.sync();
  await fh.close();
  process.stdout.write(JSON.stringify({ writes, checks, errors, msgs, model: [...model.entries()] }));
`;

const LOAD_READER = `
  import { open } from 'node:fs/promises';
  import { createHash } from 'node:crypto';
  import { crc32 } from 'node:zlib';
  ${RECORD_SRC}
  const [file, regions, seconds, seed] = process.argv.slice(1);
  const regs = JSON.parse(regions);
  let a = Number(seed) >>> 0;
  const rnd = () => { a = (a + 0x6d2b79f5) >>> 0; let t = a; t = Math.imul(t ^ (t >>> 15), t | 1); t ^= t + Math.imul(t ^ (t >>> 7), t | 61); return ((t ^ (t >>> 14)) >>> 0) / 4294967296; };
  const fh = await open(file, 'r');
  // A record read while its writer overwrites it may be torn: Linux gives buffered reads no atomicity against a
  // concurrent buffered write (the writer's copy into a page-cache page is not locked against readers; ext4 does
  // the same, README "Proof under faults"). Such a record is accepted, and counted, only if every 8-byte word of
  // it is that word of some version of this very slot by its writer (or zero, before its first write), and
  // reading it again gives a whole record. Anything else (another slot's or writer's data, garbage, a tear that
  // stays) is an error.
  async function torn(rec, r, slot) {
    if (rec.readUInt32LE(8) !== r.w || rec.readUInt32LE(16) !== slot) return 'it names writer ' + rec.readUInt32LE(8) + ' slot ' + rec.readUInt32LE(16);
    const seq = rec.readUInt32LE(12);
    const words = new Uint32Array(rec.buffer, rec.byteOffset, 1024);
    let left = Array.from({ length: 512 }, (_, k) => k);
    const seen = [];
    for (let d = 0; d < 200000 && left.length; d++) {
      const s = d % 2 ? seq - (d + 1) / 2 : seq + d / 2;
      if (s < 0) continue;
      const vb = s === 0 ? Buffer.alloc(4096) : record('VDLOAD01', r.w, s, slot); // 0: never written (zeros)
      const v = new Uint32Array(vb.buffer, vb.byteOffset, 1024);
      const rest = left.filter((k) => words[2 * k] !== v[2 * k] || words[2 * k + 1] !== v[2 * k + 1]);
      if (rest.length < left.length) seen.push(s);
      left = rest;
    }
    if (left.length) return left.length + ' of its 8-byte words (first at byte ' + left[0] * 8 + ', ' + left.filter((k) => words[2 * k] === 0 && words[2 * k + 1] === 0).length + ' of them zero) are from no version of the slot; versions ' + seen.join(',') + ' give the rest';
    const again = Buffer.alloc(4096);
    for (let i = 0; i < 3; i++) {
      await new Promise((ok) => setTimeout(ok, 1));
      await fh.read(again, 0, 4096, r.base + slot * 4096);
      if (selfCheck(again) && again.readUInt32LE(16) === slot && again.readUInt32LE(8) === r.w) return { versions: seen };
    }
    return 'the pieces are versions ' + seen.join(',') + ' of the slot, but reading it again gives no whole record';
  }
  let tears = 0;
  const tornMsgs = [];
  let reads = 0, checks = 0, errors = 0;
  const msgs = [];
  const end = Date.now() + Number(seconds) * 1000;
  const buf = Buffer.alloc(64 * 4096);
  while (Date.now() < end) {
    const r = regs[Math.floor(rnd() * regs.length)];
    const slot = Math.floor(rnd() * (r.slots - 64));
    const n = 1 + Math.floor(rnd() * 64);
    const { bytesRead } = await fh.read(buf, 0, n * 4096, r.base + slot * 4096);
    reads++;
    for (let i = 0; i < bytesRead / 4096; i++) {
      const rec = buf.subarray(i * 4096, (i + 1) * 4096);
      checks++;
      if (rec.subarray(0, 8).toString('latin1') !== 'VDLOAD01') {
        if (rec.some((x) => x !== 0)) { errors++; if (msgs.length < 5) msgs.push('garbage at slot ' + (slot + i)); }
        continue;
      }
      if (!selfCheck(rec) || rec.readUInt32LE(16) !== slot + i || rec.readUInt32LE(8) !== r.w) {
        const t = await torn(Buffer.from(rec.buffer.slice(rec.byteOffset, rec.byteOffset + 4096)), r, slot + i);
        if (typeof t === 'string') { errors++; if (msgs.length < 5) msgs.push('bad record at slot ' + (slot + i) + ' of writer ' + r.w + ': ' + t); }
        else { tears++; if (tornMsgs.length < 3) tornMsgs.push('slot ' + (slot + i) + ' of writer ' + r.w + ' (versions ' + t.versions.join(',') + ')'); }
      }
    }
  }
  await fh.close();
  process.stdout.write(JSON.stringify({ reads, checks, errors, msgs, tears, tornMsgs }));
`;

async function loadPhase() {
  const st = newStats('load');
  const rnd = prng(SEED ^ 0x10ad);
  const m = new Mount('load');
  await m.mount();
  const DISKS = [
    { name: 'l64', bs: '64K', writers: 2 },
    { name: 'l4', bs: '4K', writers: 2 },
    { name: 'l16', bs: '16K', writers: 1 },
    { name: 'l1m', bs: '1M', writers: 1 },
  ];
  const SLOTS = QUICK ? 2048 : 8192; // 8 or 32 MiB per writer
  const writers = [];
  const readers = [];
  for (const d of DISKS) {
    await m.ctlOk(`create ${d.name} ${(d.writers * SLOTS * 4096) / M + 1}M block-size=${d.bs}`);
    const regions = [];
    for (let w = 0; w < d.writers; w++) {
      const base = w * SLOTS * 4096;
      regions.push({ base, slots: SLOTS, w });
      writers.push({ disk: d.name, w, base, ...nodeChild(LOAD_WRITER, [m.disk(d.name), String(w), String(base), String(SLOTS), String(SECONDS), String(Math.floor(rnd() * 2 ** 31))]) });
    }
    for (let i = 0; i < 2; i++) readers.push({ disk: d.name, ...nodeChild(LOAD_READER, [m.disk(d.name), JSON.stringify(regions), String(SECONDS), String(Math.floor(rnd() * 2 ** 31))]) });
  }
  log(`load: ${writers.length} writers and ${readers.length} readers on ${DISKS.length} disks for ${SECONDS} s`);
  // Snapshots during the load; each is read back (self-consistent records or zeros) and the oldest deleted.
  const end = Date.now() + SECONDS * 1000;
  let snaps = 0;
  let rssSamples = 0;
  const live = new Map(DISKS.map((d) => [d.name, []]));
  while (Date.now() < end - 500) {
    await sleep(QUICK ? 700 : 2000);
    const d = DISKS[snaps % DISKS.length];
    const name = `t${snaps++}`;
    await m.ctlOk(`snapshot ${d.name} ${name}`);
    st.operations++;
    live.get(d.name).push(name);
    // Read a few MiB of it while the load goes on.
    const f = join(m.vdisk, 'snapshots', d.name, name);
    const off = Math.floor(rnd() * (SLOTS - 256)) * 4096;
    const buf = await pread(f, off, 256 * 4096);
    for (let i = 0; i < buf.length / 4096; i++) {
      const rec = buf.subarray(i * 4096, (i + 1) * 4096);
      st.checks++;
      const zero = !rec.some((x) => x !== 0);
      if (!zero && (rec.subarray(0, 8).toString('latin1') !== 'VDLOAD01' || !selfCheck(rec))) {
        st.errors++;
        throw new Error(`load: snapshot ${d.name}@${name} holds a torn or garbage record at ${off + i * 4096} (seed ${SEED})`);
      }
    }
    if (live.get(d.name).length > 3) {
      const old = live.get(d.name).shift();
      const r = await m.ctl(`delete-snapshot ${d.name} ${old}`);
      if (r !== 'OK') throw new Error(`load: delete-snapshot ${d.name} ${old}: ${r}`);
      st.operations++;
    }
    st.peakRss = Math.max(st.peakRss, await m.vmHWM());
    rssSamples++;
  }
  const wres = await Promise.all(writers.map((x) => x.done));
  const rres = await Promise.all(readers.map((x) => x.done));
  let tears = 0;
  const tornMsgs = [];
  st.peakRss = Math.max(st.peakRss, await m.vmHWM());
  const models = [];
  for (const [i, r] of wres.entries()) {
    if (r.code !== 0) throw new Error(`load writer ${i} failed (exit ${r.code}): ${r.stderr}`);
    const o = JSON.parse(r.stdout);
    st.operations += o.writes;
    st.checks += o.checks;
    if (o.errors) {
      st.errors += o.errors;
      throw new Error(`load writer ${i} read back wrong data: ${o.msgs.join('; ')} (seed ${SEED})`);
    }
    models.push({ ...writers[i], model: o.model });
  }
  for (const [i, r] of rres.entries()) {
    if (r.code !== 0) throw new Error(`load reader ${i} failed (exit ${r.code}): ${r.stderr}`);
    const o = JSON.parse(r.stdout);
    st.operations += o.reads;
    st.checks += o.checks;
    if (o.errors) {
      st.errors += o.errors;
      throw new Error(`load reader ${i} saw bad records: ${o.msgs.join('; ')} (seed ${SEED})`);
    }
    tears += o.tears;
    tornMsgs.push(...o.tornMsgs);
  }
  if (tears) {
    st.notes.push(`${tears} torn read(s) of a record mid-overwrite, each pieces of versions of its own slot and whole when read again (Linux gives buffered reads no atomicity against concurrent writes; ext4 the same): ${tornMsgs.slice(0, 3).join('; ')}`);
    log(`load: ${st.notes.at(-1)}`);
  }
  // Everything again after a clean remount.
  await m.stop();
  await m.check(st);
  await m.mount();
  let lost = 0;
  for (const x of models) {
    const all = await pread(m.disk(x.disk), x.base, SLOTS * 4096);
    for (const [slot, seq] of x.model) {
      st.checks++;
      if (!all.subarray(slot * 4096, (slot + 1) * 4096).equals(record('VDLOAD01', x.w, seq, slot))) lost++;
    }
  }
  st.bytesLost += lost * 4096;
  if (lost) {
    st.errors += lost;
    throw new Error(`load: ${lost} records differ after the remount (seed ${SEED})`);
  }
  for (const d of DISKS) {
    for (const s of live.get(d.name)) st.checks += (await pread(join(m.vdisk, 'snapshots', d.name, s), 0, 4096)).length > 0 ? 1 : 0;
  }
  await m.stop();
  await m.check(st);
  st.notes.push(`${writers.length} writers + ${readers.length} readers on ${DISKS.length} disks (4K..1M blocks) for ${SECONDS} s, ${snaps} snapshots during the load, RSS sampled ${rssSamples}x`);
}

// ---------------------------------------------------------------------------------------------------------

function fmtBytes(n) {
  if (n >= M) return `${(n / M).toFixed(0)} MiB`;
  if (n >= K) return `${(n / K).toFixed(0)} KiB`;
  return `${n} B`;
}

function summary(totalSec) {
  const lines = [
    `# vdiskfs torture summary`,
    '',
    `${new Date().toISOString()} — seed ${SEED}, ${QUICK ? 'QUICK, ' : ''}rounds ${ROUNDS}, load ${SECONDS} s, fio ${FIO_SIZE} per job, total ${totalSec.toFixed(0)} s`,
    '',
    '| phase | result | checks | operations | errors detected | bytes lost | leaks (repaired) | peak RSS | time | notes |',
    '| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |',
  ];
  for (const r of results) {
    const result = r.failed || r.errors || r.bytesLost ? 'FAIL' : r.notes.some((n) => n.startsWith('SKIPPED')) ? 'skipped' : 'ok';
    const errs = r.detected ? `${r.detected} damaged detected` : String(r.errors);
    lines.push(`| ${r.phase} | ${result} | ${r.checks} | ${r.operations} | ${errs}${r.detected && r.errors ? `, ${r.errors} missed` : ''} | ${r.bytesLost} | ${r.leaks} | ${r.peakRss ? fmtBytes(r.peakRss) : '–'} | ${r.seconds.toFixed(0)} s | ${[...r.notes, ...(r.failed ? [`FAILED: ${r.failed.split('\n')[0]}`] : [])].join('; ')} |`);
  }
  const lost = results.reduce((n, r) => n + r.bytesLost, 0);
  const peak = Math.max(0, ...results.map((r) => r.peakRss));
  lines.push('', `Total: ${results.reduce((n, r) => n + r.checks, 0)} checks, ${results.reduce((n, r) => n + r.operations, 0)} operations, bytes lost ${lost}, peak daemon RSS ${fmtBytes(peak)}.`);
  return lines.join('\n') + '\n';
}

async function main() {
  if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run npm run build`);
  root = await mkdtemp(join(tmpdir(), 'vdiskfs-torture-'));
  log(`torture: seed ${SEED} (TORTURE_SEED=${SEED} repeats it), ${QUICK ? 'quick, ' : ''}rounds ${ROUNDS}, load ${SECONDS} s, fio ${FIO_SIZE}, dir ${root}`);
  const phases = { crash: crashPhase, random: randomPhase, fio: fioPhase, fsx: fsxPhase, damage: damagePhase, load: loadPhase };
  const started = Date.now();
  let failed = false;
  for (const [name, fn] of Object.entries(phases)) {
    if (!ONLY.has(name) || cleaning) continue;
    const t0 = Date.now();
    const n = results.length;
    log(`== ${name}`);
    try {
      await fn();
    } catch (e) {
      failed = true;
      const st = results[n] ?? newStats(name);
      st.failed = cleaning ? 'interrupted' : e instanceof Error ? e.message : String(e);
      log(`${name} FAILED (seed ${SEED}): ${st.failed}`);
      // Unmount whatever the phase left, keep going with the next phase.
      for (const [mp, pid] of [...mounts]) {
        if (pid) {
          try {
            process.kill(pid, 'SIGTERM');
          } catch {
            /* gone */
          }
          await waitForExit(pid, 10_000);
        }
        if (await isMountpoint(mp)) await run(FUSERMOUNT, ['-uz', mp]);
        mounts.delete(mp);
      }
    }
    const st = results[n];
    if (st) {
      st.seconds = (Date.now() - t0) / 1000;
      if (st.errors || st.bytesLost) failed = true;
    }
  }
  const text = summary((Date.now() - started) / 1000);
  if (cleaning) {
    console.log('\n' + text + `\ninterrupted: ${SUMMARY} left as it was`);
    return 130;
  }
  await writeFile(SUMMARY, text);
  console.log('\n' + text);
  console.log(`summary written to ${SUMMARY}`);
  if (failed) {
    console.log(`FAILED — repeat with TORTURE_SEED=${SEED}${QUICK ? ' TORTURE_QUICK=1' : ''}`);
    KEEP || log('(TORTURE_KEEP=1 keeps the stores for inspection)');
  }
  return failed ? 1 : 0;
}

main()
  .then(async (code) => {
    await cleanup();
    process.exit(code);
  })
  .catch(async (e) => {
    console.error(`torture: ${e instanceof Error ? e.stack : e} (seed ${SEED})`);
    await cleanup();
    process.exit(1);
  });
