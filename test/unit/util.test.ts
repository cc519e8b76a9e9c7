import { describe, it, expect } from 'vitest';
import { splitRange, blocksFor } from '../../src/util/range.js';
import { parseSize, formatSize, checkBlockSize, checkVirtualSize, MAX_VIRTUAL_SIZE, parseReadahead } from '../../src/util/size.js';
import { mountDevice } from '../../src/util/mountinfo.js';
import { isZero } from '../../src/util/zero.js';
import { KeyedLock, Gate } from '../../src/util/lock.js';
import { VdiskError } from '../../src/errors.js';
import { prng } from './helpers.js';

const TiB = 1024 ** 4;
const tick = () => new Promise<void>((r) => setImmediate(r));

function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (e) {
    return e instanceof VdiskError ? e.code : `not a VdiskError: ${String(e)}`;
  }
  return undefined;
}

describe('splitRange', () => {
  it('splits head, body and tail', () => {
    // [1000, 13788): head 1000..4095, body blocks 1 and 2, tail 12288..13787
    const p = splitRange(1000, 4096 * 3 - 1000 + 1500, 4096);
    expect(p).toEqual([
      { lbn: 0, offsetInBlock: 1000, length: 3096, bufOffset: 0, whole: false },
      { lbn: 1, offsetInBlock: 0, length: 4096, bufOffset: 3096, whole: true },
      { lbn: 2, offsetInBlock: 0, length: 4096, bufOffset: 7192, whole: true },
      { lbn: 3, offsetInBlock: 0, length: 1500, bufOffset: 11288, whole: false },
    ]);
  });

  it('handles an exact block, a range inside one block and a range ending on a boundary', () => {
    expect(splitRange(8192, 4096, 4096)).toEqual([{ lbn: 2, offsetInBlock: 0, length: 4096, bufOffset: 0, whole: true }]);
    expect(splitRange(8200, 10, 4096)).toEqual([{ lbn: 2, offsetInBlock: 8, length: 10, bufOffset: 0, whole: false }]);
    expect(splitRange(100, 4096 - 100, 4096)).toEqual([{ lbn: 0, offsetInBlock: 100, length: 3996, bufOffset: 0, whole: false }]);
    expect(splitRange(4095, 2, 4096).map((p) => [p.lbn, p.offsetInBlock, p.length])).toEqual([[0, 4095, 1], [1, 0, 1]]);
  });

  it('returns nothing for a zero-length range', () => {
    expect(splitRange(0, 0, 4096)).toEqual([]);
    expect(splitRange(12345, 0, 65536)).toEqual([]);
  });

  it('is exact at large offsets near 16 TiB and 8 PiB', () => {
    const off = 16 * TiB - 4096 - 7;
    const p = splitRange(off, 4096 + 7, 4096);
    expect(p.map((x) => [x.lbn, x.offsetInBlock, x.length, x.bufOffset])).toEqual([
      [16 * TiB / 4096 - 2, 4089, 7, 0],
      [16 * TiB / 4096 - 1, 0, 4096, 7],
    ]);
    const big = MAX_VIRTUAL_SIZE - 512 - 65536 * 2 - 3;
    const q = splitRange(big, 65536 * 2, 65536);
    expect(q.reduce((s, x) => s + x.length, 0)).toBe(65536 * 2);
    expect(q[0]!.lbn * 65536 + q[0]!.offsetInBlock).toBe(big);
    expect(q.at(-1)!.lbn * 65536 + q.at(-1)!.offsetInBlock + q.at(-1)!.length).toBe(big + 65536 * 2);
  });

  it('random ranges cover the input exactly (seeded)', () => {
    const seed = 1234;
    const rnd = prng(seed);
    for (let i = 0; i < 2000; i++) {
      const bs = 2 ** (12 + Math.floor(rnd() * 9));
      const off = Math.floor(rnd() * 2 ** 44);
      const len = Math.floor(rnd() * bs * 5);
      const ps = splitRange(off, len, bs);
      let pos = off;
      let buf = 0;
      for (const [j, p] of ps.entries()) {
        const ctx = `seed ${seed} iter ${i} off ${off} len ${len} bs ${bs} piece ${j}`;
        expect(p.lbn * bs + p.offsetInBlock, ctx).toBe(pos);
        expect(p.bufOffset, ctx).toBe(buf);
        expect(p.length, ctx).toBeGreaterThan(0);
        expect(p.offsetInBlock + p.length, ctx).toBeLessThanOrEqual(bs);
        expect(p.whole, ctx).toBe(p.length === bs);
        if (j > 0 && j < ps.length - 1) expect(p.whole, ctx).toBe(true);
        pos += p.length;
        buf += p.length;
      }
      expect(pos, `seed ${seed} iter ${i}`).toBe(off + len);
    }
  });

  it('blocksFor rounds up', () => {
    expect(blocksFor(0, 4096)).toBe(0);
    expect(blocksFor(1, 4096)).toBe(1);
    expect(blocksFor(4096, 4096)).toBe(1);
    expect(blocksFor(4097, 4096)).toBe(2);
    expect(blocksFor(16 * TiB, 65536)).toBe(16 * TiB / 65536);
  });
});

describe('parseSize / formatSize', () => {
  it('parses plain numbers and K, M, G, T, P suffixes as powers of 1024', () => {
    expect(parseSize('0')).toBe(0);
    expect(parseSize('512')).toBe(512);
    expect(parseSize('4K')).toBe(4096);
    expect(parseSize('4k')).toBe(4096);
    expect(parseSize('64K')).toBe(65536);
    expect(parseSize('1M')).toBe(1024 ** 2);
    expect(parseSize('500G')).toBe(500 * 1024 ** 3);
    expect(parseSize('16T')).toBe(16 * TiB);
    expect(parseSize('1P')).toBe(1024 ** 5);
    expect(parseSize(' 2 G ')).toBe(2 * 1024 ** 3);
    expect(parseSize('1KiB')).toBe(1024);
    expect(parseSize('1KB')).toBe(1024);
    expect(parseSize('7B')).toBe(7);
    expect(parseSize('1.5K')).toBe(1536);
    expect(parseSize('0.5M')).toBe(512 * 1024);
  });

  it('rejects bad input with INVALID', () => {
    for (const bad of ['', ' ', 'abc', '-1', '1X', '1.5', '0.1K', '1 2', 'K', '1e6', '0x10', '1..5K', '+5', '1KK', 'NaN', 'Infinity', '5\n5']) {
      expect(codeOf(() => parseSize(bad)), JSON.stringify(bad)).toBe('INVALID');
    }
  });

  it('refuses sizes at or above 2^53', () => {
    expect(codeOf(() => parseSize('8P'))).toBe('INVALID');
    expect(codeOf(() => parseSize('9007199254740992'))).toBe('INVALID');
    expect(codeOf(() => parseSize('9007199254740993'))).toBe('INVALID');
    expect(codeOf(() => parseSize('99999999999999999999999T'))).toBe('INVALID');
    expect(codeOf(() => parseSize('8192T'))).toBe('INVALID');
    expect(parseSize('9007199254740991')).toBe(2 ** 53 - 1);
    expect(parseSize('8191T')).toBe(8191 * TiB);
  });

  it('formats sizes', () => {
    expect(formatSize(0)).toBe('0B');
    expect(formatSize(512)).toBe('512B');
    expect(formatSize(1024)).toBe('1K');
    expect(formatSize(1536)).toBe('1.5K');
    expect(formatSize(65536)).toBe('64K');
    expect(formatSize(1024 ** 2)).toBe('1M');
    expect(formatSize(500 * 1024 ** 3)).toBe('500G');
    expect(formatSize(16 * TiB)).toBe('16T');
    expect(formatSize(8 * 1024 ** 5)).toBe('8P');
  });

  it('formatSize output parses back to the same value for whole units', () => {
    for (const v of [1, 1024, 4096, 65536, 1024 ** 2, 3 * 1024 ** 3, 16 * TiB, 1536]) expect(parseSize(formatSize(v))).toBe(v);
  });

  it('checks block sizes and virtual sizes', () => {
    for (const bs of [4096, 8192, 65536, 1024 * 1024]) expect(codeOf(() => checkBlockSize(bs))).toBeUndefined();
    for (const bs of [0, 512, 2048, 3000, 4095, 12288, 2 * 1024 * 1024, 4096.5, NaN]) expect(codeOf(() => checkBlockSize(bs)), String(bs)).toBe('INVALID');
    for (const s of [512, 1024, 16 * TiB, MAX_VIRTUAL_SIZE - 512]) expect(codeOf(() => checkVirtualSize(s, 4096)), String(s)).toBeUndefined();
    for (const s of [0, -512, 511, 1000, 1.5, NaN, Infinity, MAX_VIRTUAL_SIZE, MAX_VIRTUAL_SIZE + 512, 2 ** 60]) {
      expect(codeOf(() => checkVirtualSize(s, 4096)), String(s)).toBe('INVALID');
    }
  });
});

describe('parseReadahead', () => {
  it('takes 0 or whole KiB up to 256M and refuses the rest with a reason', () => {
    expect(parseReadahead('0')).toBe(0);
    expect(parseReadahead('1M')).toBe(1024 * 1024);
    expect(parseReadahead('512K')).toBe(512 * 1024);
    expect(parseReadahead('256M')).toBe(256 * 1024 * 1024);
    for (const bad of ['3000', '257M', '1G', '-1', 'lots']) expect(() => parseReadahead(bad), bad).toThrow(/readahead|size/);
  });
});

describe('mountDevice', () => {
  const info = [
    '22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw',
    '80 22 0:39 / /tmp/with\\040space rw,nosuid,nodev,relatime shared:40 - fuse.vdiskfs vdiskfs rw,user_id=0,group_id=0',
    '81 22 0:41 / /mnt/v rw shared:41 - fuse.vdiskfs vdiskfs rw',
    '82 81 0:42 / /mnt/v rw shared:42 - fuse.vdiskfs vdiskfs rw',
    '',
  ].join('\n');
  it('finds the major:minor of a mount, unescaping the mountpoint; the last one stacked wins', () => {
    expect(mountDevice(info, '/')).toBe('254:0');
    expect(mountDevice(info, '/tmp/with space')).toBe('0:39');
    expect(mountDevice(info, '/mnt/v')).toBe('0:42');
    expect(mountDevice(info, '/mnt')).toBeUndefined();
    expect(mountDevice(info, '/tmp/with\\040space')).toBeUndefined();
  });
});

describe('isZero', () => {
  it('detects zeros at every length and every non-zero position', () => {
    for (let n = 0; n <= 40; n++) {
      const b = Buffer.alloc(n);
      expect(isZero(b)).toBe(true);
      for (let i = 0; i < n; i++) {
        b[i] = 1;
        expect(isZero(b), `len ${n} pos ${i}`).toBe(false);
        b[i] = 0x80;
        expect(isZero(b), `len ${n} pos ${i} 0x80`).toBe(false);
        b[i] = 0;
      }
    }
  });

  it('works on unaligned subarrays and big blocks', () => {
    const big = Buffer.alloc(65536 + 3);
    expect(isZero(big.subarray(3))).toBe(true);
    big[65538] = 7;
    expect(isZero(big.subarray(3))).toBe(false);
    expect(isZero(big.subarray(0, 65538))).toBe(true);
    const neg = Buffer.alloc(8);
    neg.writeDoubleLE(-0);
    expect(isZero(neg)).toBe(false);
  });
});

describe('KeyedLock', () => {
  it('grants one key in FIFO order with mutual exclusion', async () => {
    const lock = new KeyedLock();
    const order: string[] = [];
    let inside = 0;
    let maxInside = 0;
    const worker = async (id: number) => {
      const release = await lock.acquire(7);
      inside++;
      maxInside = Math.max(maxInside, inside);
      order.push(`in${id}`);
      for (let i = 0; i < 3; i++) await tick();
      order.push(`out${id}`);
      inside--;
      release();
    };
    await Promise.all([0, 1, 2, 3, 4].map(worker));
    expect(maxInside).toBe(1);
    expect(order).toEqual(['in0', 'out0', 'in1', 'out1', 'in2', 'out2', 'in3', 'out3', 'in4', 'out4']);
  });

  it('different keys do not block each other', async () => {
    const lock = new KeyedLock();
    const r1 = await lock.acquire(1);
    const r2 = await Promise.race([lock.acquire(2), new Promise<null>((r) => setTimeout(() => r(null), 200))]);
    expect(r2).not.toBeNull();
    r1();
    (r2 as () => void)();
  });

  it('a key can be taken again after release (the tail map empties)', async () => {
    const lock = new KeyedLock();
    for (let i = 0; i < 5; i++) (await lock.acquire(3))();
    expect((lock as unknown as { tails: Map<number, unknown> }).tails.size).toBe(0);
  });

  it('acquireAll with overlapping, unsorted and duplicate key sets does not deadlock and excludes', async () => {
    const seed = 99;
    const rnd = prng(seed);
    const lock = new KeyedLock();
    const holders = new Map<number, number>();
    let conflicts = 0;
    const tasks = Array.from({ length: 40 }, (_, t) => async () => {
      const keys = Array.from({ length: 1 + Math.floor(rnd() * 5) }, () => Math.floor(rnd() * 8));
      const release = await lock.acquireAll(keys);
      for (const k of new Set(keys)) {
        if (holders.has(k)) conflicts++;
        holders.set(k, t);
      }
      await tick();
      for (const k of new Set(keys)) holders.delete(k);
      release();
    });
    const all = Promise.all(tasks.map((f) => f()));
    const timeout = new Promise<string>((r) => setTimeout(() => r('deadlock'), 5000));
    expect(await Promise.race([all.then(() => 'done'), timeout]), `seed ${seed}`).toBe('done');
    expect(conflicts, `seed ${seed}`).toBe(0);
  });
});

describe('Gate', () => {
  it('exclusive waits for running shared operations and holds new ones back', async () => {
    const gate = new Gate();
    const events: string[] = [];
    let releaseShared!: () => void;
    const sharedDone = gate.run(async () => {
      events.push('shared1 start');
      await new Promise<void>((r) => (releaseShared = r));
      events.push('shared1 end');
    });
    await tick();
    const excl = gate.exclusively(async () => {
      events.push('excl start');
      await tick();
      events.push('excl end');
      return 42;
    });
    await tick();
    const shared2 = gate.run(async () => {
      events.push('shared2');
    });
    await tick();
    expect(events).toEqual(['shared1 start']);
    releaseShared();
    expect(await excl).toBe(42);
    await Promise.all([sharedDone, shared2]);
    expect(events).toEqual(['shared1 start', 'shared1 end', 'excl start', 'excl end', 'shared2']);
  });

  it('exclusive runs at once when idle; exclusives are serialised; an error releases the gate', async () => {
    const gate = new Gate();
    let inside = 0;
    let max = 0;
    const ex = (fail: boolean) =>
      gate.exclusively(async () => {
        inside++;
        max = Math.max(max, inside);
        await tick();
        inside--;
        if (fail) throw new Error('boom');
      });
    const results = await Promise.allSettled([ex(false), ex(true), ex(false), gate.run(async () => 'ok')]);
    expect(max).toBe(1);
    expect(results.map((r) => r.status)).toEqual(['fulfilled', 'rejected', 'fulfilled', 'fulfilled']);
    expect(await gate.run(async () => 'after')).toBe('after');
  });

  it('many shared operations run concurrently', async () => {
    const gate = new Gate();
    let inside = 0;
    let max = 0;
    await Promise.all(
      Array.from({ length: 5 }, () =>
        gate.run(async () => {
          inside++;
          max = Math.max(max, inside);
          await tick();
          inside--;
        }),
      ),
    );
    expect(max).toBe(5);
  });

  it('exclusive waits for all of several shared operations', async () => {
    const gate = new Gate();
    const releases: (() => void)[] = [];
    const shared = [0, 1, 2].map(() => gate.run(() => new Promise<void>((r) => releases.push(r))));
    await tick();
    let ran = false;
    const ex = gate.exclusively(async () => {
      ran = true;
    });
    releases[0]!();
    releases[2]!();
    await tick();
    await tick();
    expect(ran).toBe(false);
    releases[1]!();
    await ex;
    expect(ran).toBe(true);
    await Promise.all(shared);
  });
});
