#!/usr/bin/env node
/**
 * fsx for vdiskfs disk files: a port of the operation mix of fsx (the file system exerciser of xfstests,
 * ltp and BSD), with xfstests generic/127's parameters as defaults: a 256 KiB region (-l 262144), operations
 * up to 64 KiB (-o 65536), 100,000 operations (-N), seed 191110531 (-S). Every operation is checked against
 * a shadow copy of the region in memory; the first mismatch stops the run with the operation log.
 *
 *   node scripts/fsx.mjs FILE [-N ops] [-S seed] [-l bytes] [-o bytes] [-c closeprob] [-P punchprob]
 *
 * Operations, as fsx picks them: read (compared with the shadow), write (random bytes at a random offset),
 * punch hole (`fallocate -p`, PUNCH_HOLE|KEEP_SIZE, the discard of a disk: reads as zeros after it), fsync,
 * and close/reopen of the file (-c: one in N operations). What differs from fsx, and why: a disk file has a
 * fixed size, so fsx's truncate and extending writes become punch holes and writes inside the region; Node
 * has no mmap, so fsx's mapread/mapwrite are plain reads and writes. Output: one line `fsx: N ops, ...` and
 * `final <sha256 of the region>` (the caller checks it again after a remount); exit 1 on a mismatch.
 * Asynchronous I/O only, one child process per punch.
 */
import { open } from 'node:fs/promises';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';

const args = process.argv.slice(2);
const file = args.find((a, i) => !a.startsWith('-') && !(i > 0 && args[i - 1].startsWith('-')));
const opt = (flag, def) => {
  const i = args.indexOf(flag);
  return i >= 0 ? Number(args[i + 1]) : def;
};
if (!file) {
  console.error('usage: fsx.mjs FILE [-N ops] [-S seed] [-l bytes] [-o bytes] [-c closeprob] [-P punchprob]');
  process.exit(2);
}
const OPS = opt('-N', 100_000);
const SEED = opt('-S', 191110531);
const LEN = opt('-l', 262144);
const MAXOP = Math.max(4, opt('-o', 65536) & ~3);
const CLOSEPROB = opt('-c', 100); // fsx -c: close/reopen one operation in N
const PUNCHPROB = opt('-P', 50); // a punch hole one operation in N (about)

let x = SEED >>> 0 || 1;
const rnd = () => {
  x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
  return x;
};
const recent = [];
const note = (s) => {
  recent.push(s);
  if (recent.length > 30) recent.shift();
};

function punch(off, len) {
  return new Promise((resolve, reject) => {
    const c = spawn('fallocate', ['-p', '-o', String(off), '-l', String(len), '--', file], { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    c.stderr.on('data', (d) => (err += d));
    c.on('error', reject);
    c.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`fallocate -p: ${err.trim()}`))));
  });
}

let fh = await open(file, 'r+');
const shadow = Buffer.alloc(LEN);
await fh.read(shadow, 0, LEN, 0); // the region as it is now
const counts = { read: 0, write: 0, punch: 0, fsync: 0, reopen: 0 };
const buf = Buffer.alloc(MAXOP);
const t0 = Date.now();
for (let op = 1; op <= OPS; op++) {
  const kind = rnd() % 100;
  const off = rnd() % LEN;
  const len = Math.min(1 + (rnd() % MAXOP), LEN - off);
  if (kind < 45) {
    const { bytesRead } = await fh.read(buf, 0, len, off);
    counts.read++;
    note(`${op} read ${off}+${len}`);
    if (bytesRead !== len || !buf.subarray(0, len).equals(shadow.subarray(off, off + len))) {
      let i = 0;
      while (i < len && buf[i] === shadow[off + i]) i++;
      console.error(`fsx: MISMATCH at op ${op}, seed ${SEED}: read ${off}+${len} differs at ${off + i} (got ${buf[i]}, want ${shadow[off + i]}; ${bytesRead} bytes read)\nlast operations:\n  ${recent.join('\n  ')}`);
      process.exit(1);
    }
  } else if (kind < 90) {
    for (let i = 0; i < len; i += 4) buf.writeUInt32LE(rnd(), Math.min(i, MAXOP - 4));
    let done = 0;
    while (done < len) done += (await fh.write(buf, done, len - done, off + done)).bytesWritten;
    buf.copy(shadow, off, 0, len);
    counts.write++;
    note(`${op} write ${off}+${len}`);
  } else if (kind < 90 + 100 / PUNCHPROB) {
    await punch(off, len);
    shadow.fill(0, off, off + len);
    counts.punch++;
    note(`${op} punch ${off}+${len}`);
  } else {
    await fh.sync();
    counts.fsync++;
    note(`${op} fsync`);
  }
  if (rnd() % CLOSEPROB === 0) {
    await fh.close();
    fh = await open(file, 'r+');
    counts.reopen++;
    note(`${op} close/open`);
  }
}
await fh.sync();
await fh.close();
const sec = (Date.now() - t0) / 1000;
console.log(`fsx: ${OPS} ops in ${sec.toFixed(1)} s (seed ${SEED}, -l ${LEN} -o ${MAXOP}): ${Object.entries(counts).map(([k, v]) => `${v} ${k}`).join(', ')}`);
console.log(`final ${createHash('sha256').update(shadow).digest('hex')}`);
