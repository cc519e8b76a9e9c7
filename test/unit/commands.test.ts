import { describe, it, expect, afterAll } from 'vitest';
import { parseCommand, runLine, USAGE } from '../../src/control/commands.js';
import { Registry } from '../../src/disk/registry.js';
import { writeDisk, readView } from '../../src/disk/io.js';
import { VdiskError } from '../../src/errors.js';
import { tempDir, cleanupDirs, expectCode, prng } from './helpers.js';

afterAll(cleanupDirs);

const M = 1024 * 1024;

function parseErr(line: string): string | undefined {
  try {
    parseCommand(line);
  } catch (e) {
    return e instanceof VdiskError ? e.code : `not a VdiskError: ${String(e)}`;
  }
  return undefined;
}

describe('parseCommand accepts', () => {
  it('create with sizes and block-size options', () => {
    expect(parseCommand('create db1 500G')).toEqual({ op: 'create', disk: 'db1', size: 500 * 1024 ** 3 });
    expect(parseCommand('create d 1M block-size=4K')).toEqual({ op: 'create', disk: 'd', size: M, blockSize: 4096 });
    expect(parseCommand('create d 1M bs=64K')).toEqual({ op: 'create', disk: 'd', size: M, blockSize: 65536 });
    expect(parseCommand('create bs=64K d 1M')).toEqual({ op: 'create', disk: 'd', size: M, blockSize: 65536 });
    expect(parseCommand('  create\td   16T  ')).toEqual({ op: 'create', disk: 'd', size: 16 * 1024 ** 4 });
    expect(parseCommand('create d 1.5M')).toEqual({ op: 'create', disk: 'd', size: 1.5 * M });
  });

  it('delete with and without -r / --recursive, in any position', () => {
    expect(parseCommand('delete d')).toEqual({ op: 'delete', disk: 'd', recursive: false });
    expect(parseCommand('delete d -r')).toEqual({ op: 'delete', disk: 'd', recursive: true });
    expect(parseCommand('delete -r d')).toEqual({ op: 'delete', disk: 'd', recursive: true });
    expect(parseCommand('delete d --recursive')).toEqual({ op: 'delete', disk: 'd', recursive: true });
  });

  it('resize', () => {
    expect(parseCommand('resize d 2G')).toEqual({ op: 'resize', disk: 'd', size: 2 * 1024 ** 3 });
    expect(parseCommand('resize d 4096')).toEqual({ op: 'resize', disk: 'd', size: 4096 });
  });

  it('snapshot commands in the `disk snap` and `disk@snap` forms', () => {
    for (const op of ['snapshot', 'delete-snapshot', 'rollback'] as const) {
      const extra = op === 'rollback' ? { destroyNewer: false } : {};
      expect(parseCommand(`${op} d s1`)).toEqual({ op, disk: 'd', snap: 's1', ...extra });
      expect(parseCommand(`${op} d@s1`)).toEqual({ op, disk: 'd', snap: 's1', ...extra });
      expect(parseCommand(`${op}   d@s1  `)).toEqual({ op, disk: 'd', snap: 's1', ...extra });
    }
    expect(parseCommand('rollback d@s1 -r')).toEqual({ op: 'rollback', disk: 'd', snap: 's1', destroyNewer: true });
    expect(parseCommand('rollback -r d s1')).toEqual({ op: 'rollback', disk: 'd', snap: 's1', destroyNewer: true });
    expect(parseCommand('clone d s1 c')).toEqual({ op: 'clone', disk: 'd', snap: 's1', target: 'c' });
    expect(parseCommand('clone d@s1 c')).toEqual({ op: 'clone', disk: 'd', snap: 's1', target: 'c' });
  });

  it('every USAGE line names a command the parser knows', () => {
    for (const u of USAGE) expect(parseErr(u.split(' ')[0]!), u).toBe('INVALID'); // known command, wrong arguments
    for (const u of USAGE) expect(() => parseCommand(u.split(' ')[0]!)).toThrow(/usage/);
  });
});

describe('parseCommand rejects', () => {
  it('empty, unknown and garbage commands with INVALID', () => {
    for (const line of ['', '   ', '\t', 'foo', 'CREATE d 1M', 'create', 'create d', 'create d 1M 2M', 'create d 1M bs=', 'create d 1M size=4K',
      'create d xyz', 'create d -1', 'create d 8P', 'delete', 'delete a b', 'delete -r', 'resize d', 'resize d 1M 2M',
      'resize d big', 'snapshot', 'snapshot d', 'snapshot d s t', 'snapshot d@s t', 'rollback d', 'delete-snapshot d@s x',
      'clone', 'clone d s', 'clone d@s', 'clone d s c x', 'clone d@s c x', 'rm -rf /', '🙂']) {
      expect(parseErr(line), JSON.stringify(line)).toBe('INVALID');
    }
  });

  it('NUL and other control characters, binary garbage', () => {
    for (const line of ['snapshot d s\0', '\0', 'create d\x01 1M', 'delete d\x7f', 'delete d\x1b[2J', 'create d 1M\x00bs=4K', 'snapshot d s\r\x00']) {
      expect(parseErr(line), JSON.stringify(line)).toBe('INVALID');
    }
    const seed = 5;
    const rnd = prng(seed);
    for (let i = 0; i < 300; i++) {
      const bytes = Buffer.from(Array.from({ length: 1 + Math.floor(rnd() * 80) }, () => Math.floor(rnd() * 256)));
      const line = bytes.toString('latin1');
      const code = parseErr(line);
      // never crashes with anything but a typed INVALID; the few lines that do parse are real commands
      if (code !== undefined) expect(code, `seed ${seed} line ${JSON.stringify(line)}`).toBe('INVALID');
      const utf = bytes.toString('utf8');
      const code2 = parseErr(utf);
      if (code2 !== undefined) expect(code2, `seed ${seed} line ${JSON.stringify(utf)}`).toBe('INVALID');
    }
  });

  it('a 10 KB line, without echoing all of it', () => {
    const line = 'create ' + 'd'.repeat(10 * 1024) + ' 1M';
    let err: unknown;
    try {
      parseCommand(line);
    } catch (e) {
      err = e;
    }
    expect((err as VdiskError).code).toBe('INVALID');
    expect((err as VdiskError).message.length).toBeLessThan(300);
    const unknown = 'x'.repeat(4000);
    let err2: unknown;
    try {
      parseCommand(unknown);
    } catch (e) {
      err2 = e;
    }
    expect((err2 as VdiskError).code).toBe('INVALID');
    expect((err2 as VdiskError).message.length).toBeLessThan(300);
  });

  // Regression (fixed in 7ae2d1a): `split('=', 2)` silently dropped everything after a second '='
  // ("bs=4K=junk" was taken as bs=4K).
  it('an option value containing a second "=" is refused', () => {
    expect(parseErr('create d 1M bs=4K=junk')).toBe('INVALID');
  });

  // Regression (fixed in 7ae2d1a): splitAt used `split('@', 2)`, which silently dropped a second '@'
  // part: `snapshot d@s@t` created snapshot `s` (and `rollback d@s@t` rolled back to `s`).
  it('`disk@snap@more` is refused, not truncated to `disk@snap`', () => {
    expect(parseErr('snapshot d@s@t')).toBe('INVALID');
    expect(parseErr('rollback d@s@t')).toBe('INVALID');
    expect(parseErr('clone d@s@t c')).toBe('INVALID');
  });
});

describe('runLine', () => {
  it('executes commands end to end and records each with its result in the history', async () => {
    const dir = await tempDir();
    const reg = await Registry.open({ dir });
    expect(await runLine(reg, 'create d 1M bs=4K')).toBe('created d');
    await writeDisk(reg.ctx, reg.disk('d'), 0, Buffer.alloc(4096, 1));
    expect(await runLine(reg, 'snapshot d@s1')).toMatch(/^snapshot d@s1 id [0-9a-f-]{36}$/);
    await writeDisk(reg.ctx, reg.disk('d'), 0, Buffer.alloc(4096, 2));
    expect(await runLine(reg, 'clone d s1 c')).toBe('cloned d@s1 as c');
    await expectCode(runLine(reg, 'delete-snapshot d s1'), 'BUSY');
    await expectCode(runLine(reg, 'delete d'), 'BUSY');
    await expectCode(runLine(reg, 'create d 1M'), 'EXISTS');
    await expectCode(runLine(reg, 'frobnicate'), 'INVALID');
    await expectCode(runLine(reg, 'snapshot d\0x'), 'INVALID');
    await expectCode(runLine(reg, 'snapshot nope s'), 'NOT_FOUND');
    await expectCode(runLine(reg, 'snapshot d@'), 'INVALID');
    expect(await runLine(reg, 'rollback d@s1')).toBe('rolled d back to s1');
    const b = Buffer.alloc(4096);
    await readView(reg.ctx, reg.disk('d'), -1, 0, b);
    expect(b).toEqual(Buffer.alloc(4096, 1));
    expect(await runLine(reg, 'resize d 2M')).toBe('resized d');
    expect(reg.disk('d').rec.size).toBe(2 * M);
    expect(await runLine(reg, 'delete c')).toBe('deleted c');
    expect(await runLine(reg, 'delete-snapshot d@s1')).toBe('deleted snapshot d@s1');
    expect(await runLine(reg, 'delete d -r')).toBe('deleted d');
    const long = 'delete ' + 'z'.repeat(5000);
    await expectCode(runLine(reg, long), 'INVALID');

    const h = await reg.history();
    expect(h.map((x) => [x.command, x.result])).toEqual([
      ['create d 1M bs=4K', 'ok'],
      ['snapshot d@s1', 'ok'],
      ['clone d s1 c', 'ok'],
      ['delete-snapshot d s1', 'error'],
      ['delete d', 'error'],
      ['create d 1M', 'error'],
      ['frobnicate', 'error'],
      ['snapshot d?x', 'error'],
      ['snapshot nope s', 'error'],
      ['snapshot d@', 'error'],
      ['rollback d@s1', 'ok'],
      ['resize d 2M', 'ok'],
      ['delete c', 'ok'],
      ['delete-snapshot d@s1', 'ok'],
      ['delete d -r', 'ok'],
      ['delete ' + 'z'.repeat(193) + '…', 'error'],
    ]);
    expect(h[3]).toMatchObject({ code: 'BUSY' });
    expect(h[6]).toMatchObject({ code: 'INVALID' });
    expect(h[8]).toMatchObject({ code: 'NOT_FOUND' });
    expect(h[0]!.message).toBe('created d');
    for (const x of h) expect(Number.isNaN(Date.parse(x.time))).toBe(false);
    await reg.close();
    const reg2 = await Registry.open({ dir });
    expect((await reg2.history()).length).toBe(h.length);
    expect(reg2.names()).toEqual([]);
    await reg2.close();
  });

  it('a failed command changes nothing', async () => {
    const dir = await tempDir();
    const reg = await Registry.open({ dir });
    await runLine(reg, 'create d 1M bs=4K');
    await runLine(reg, 'snapshot d s');
    const before = JSON.stringify(reg.disk('d').rec);
    for (const line of ['resize d 1000', 'resize d 0', 'create e 0', 'create e 1M bs=3000', 'snapshot d s', 'snapshot d bad/name', 'rollback d t', 'clone d s d', 'delete d']) {
      await expect(runLine(reg, line), line).rejects.toBeInstanceOf(VdiskError);
    }
    expect(JSON.stringify(reg.disk('d').rec)).toBe(before);
    expect(reg.names()).toEqual(['d']);
    await reg.close();
  });
});
