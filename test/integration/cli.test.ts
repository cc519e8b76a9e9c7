// The command line (issues 15 and 19): no default command (a typo is a usage error, a directory still
// mounts), option values checked as usage errors, --json on every command that reports, -p progress with
// totals when stderr is not a terminal, -q, and one error -> exit code map that gives the same code and the
// same reason offline and through the mount (the mount's typed reply, control/reply.ts).

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { existsSync } from 'node:fs';
import { open, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { CLI, M, REPO, VdiskMount, isMountpoint, q, randomBuffer, requireBuild, run, sh, teardownAll, vdiskfs, writeAt, type RunResult } from './helpers.js';
import { formatSize } from '../../src/util/size.js';

let o: VdiskMount;
let full: string;
let delta: string;
let short: string;
const cli = `${q(process.execPath)} ${q(CLI)}`;

beforeAll(async () => {
  requireBuild();
  o = await VdiskMount.unmounted();
  await o.mount();
  await o.ctlOk('create a 32M');
  await writeAt(o.disk('a'), 3 * M, randomBuffer(1901, 5 * M), true);
  await o.ctlOk('snapshot a s1');
  await writeAt(o.disk('a'), 20 * M, randomBuffer(1902, 2 * M), true);
  await o.ctlOk('snapshot a s2');
  await o.unmount();
  full = join(o.root, 'a-s1.img');
  delta = join(o.root, 'a-s1-s2.img');
  short = join(o.root, 'short.img');
  for (const args of [['backup', 'a@s1', '-o', full], ['backup', 'a@s2', '--since', 's1', '-o', delta]]) {
    const r = await vdiskfs([...args, '--store', o.store]);
    expect(r.code, r.stderr).toBe(0);
  }
  const fh = await open(full, 'r');
  const head = Buffer.alloc(1 * M);
  await fh.read(head, 0, head.length, 0);
  await fh.close();
  await writeFile(short, head);
});

afterAll(async () => {
  await teardownAll();
});

/** Two clients of the control file: each reads back the reply to its own last command, not the other's. */
async function eachOpenFileHasItsOwnReply(): Promise<void> {
  const ctl = join(o.mp, '.vdisk', 'ctl');
  const a = await open(ctl, 'r+');
  const b = await open(ctl, 'r+');
  try {
    const failed = await a.write('create a 1M\n').then(() => 'ok', (e: NodeJS.ErrnoException) => e.code);
    expect(failed).toBe('EEXIST');
    await b.write('create other 1M\n');
    const read = async (fh: typeof a): Promise<unknown> => {
      const buf = Buffer.alloc(4096);
      const { bytesRead } = await fh.read(buf, 0, buf.length, 0);
      return JSON.parse(buf.subarray(0, bytesRead).toString());
    };
    expect(await read(b)).toEqual({ ok: true, message: 'created other' });
    expect(await read(a)).toEqual({ ok: false, code: 'EXISTS', message: 'disk a already exists' });
  } finally {
    await a.close();
    await b.close();
  }
  // `echo … > ctl` works as before, errno and all.
  const e = await sh(`echo 'create a 1M' > ${q(ctl)}`);
  expect(e.code).not.toBe(0);
  expect(e.stderr).toMatch(/exists/i);
  await o.ctlOk('delete other');
}

const lastLine = (s: string): string => s.trim().split('\n').pop() ?? '';

describe('usage', () => {
  it('a typo is an unknown command with a suggestion (exit 2), not a mount; no arguments is a usage error', async () => {
    const r = await vdiskfs(['staus', '--store', o.store]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/unknown command 'staus'/);
    expect(r.stderr).toMatch(/Did you mean status\?/);
    expect(existsSync(join(o.root, 'staus'))).toBe(false);
    expect((await vdiskfs([])).code).toBe(2);
    expect((await vdiskfs(['--help'])).code).toBe(0);
  });

  it('option values are usage errors (exit 2) before anything starts: --log-level, -o log_level, sizes, rows', async () => {
    const mp = join(o.root, 'mp');
    const fresh = join(o.root, 'never');
    for (const args of [
      ['mount', mp, '--store', fresh, '--log-level', 'chatty'],
      ['mount', mp, '--store', fresh, '-o', 'log_level=chatty'],
      ['mount', mp, '--store', fresh, '--pool-size', '10X'],
      ['mount', mp, '--store', fresh, '--readahead', '3000'],
      ['mount', mp, '--store', fresh, '--table-cache', '100K'],
      ['mount', mp, '--store', fresh, '-o', 'table_cache=lots'],
      ['mount', mp, '--store', fresh, '--block-store', 'tape'],
      ['create', 'z', '1M', '--block-size', '64Q', '--store', fresh],
      ['inspect', full, '--rows', 'many'],
    ]) {
      const r = await vdiskfs(args);
      expect(r.code, `${args.join(' ')}: ${r.stderr}`).toBe(2);
      expect(r.stderr, args.join(' ')).toMatch(/log level|invalid|bad size|readahead|table cache|block store|rows/i);
      expect(r.stderr).not.toMatch(/at .*\.js:\d+/); // no stack trace
    }
    expect(await isMountpoint(mp)).toBe(false);
    expect(existsSync(fresh)).toBe(false);
  });

  it('the man page documents every command of --help and every exit code of the one map', async () => {
    const help = await vdiskfs(['--help']);
    const commands = [...help.stdout.matchAll(/^  ([a-z-]+)(?:\|[a-z]+)? /gm)].map((x) => x[1]!).filter((c) => c !== 'help' && !c.startsWith('-'));
    expect(commands.length).toBeGreaterThan(15);
    const man = await readFile(join(REPO, 'man/vdiskfs.8'), 'utf8');
    for (const c of commands) expect(man, c).toMatch(new RegExp(`^\\.B[IR]? (?:.*" )?${c.replace(/-/g, '\\\\-')}(?: |$)`, 'm'));
    const exitStatus = man.slice(man.indexOf('.SH "EXIT STATUS"'), man.indexOf('.SH ENVIRONMENT'));
    for (let code = 0; code <= 8; code++) expect(exitStatus).toMatch(new RegExp(`^\\.TP(?: 4)?\\n${code}\\n`, 'm'));
  });
});

describe('offline and through the mount', () => {
  // Each fails and changes nothing, so both runs start from the same state.
  const failures = (): [string[], number][] => [
    [['create', 'a', '1M'], 4],
    [['snapshot', 'nosuch', 's'], 3],
    [['delete', 'a'], 5],
    [['create', 'x', '12Q'], 2],
    [['restore', short, '--as', 'n1'], 7],
    [['restore', full, '--as', 'a'], 4],
    [['restore', delta, '--as', 'n2'], 2],
    [['restore', full, '--into', 'nosuch'], 3],
    [['restore', join(o.root, 'nope.img'), '--as', 'n3'], 3],
  ];
  const runAll = async (): Promise<{ code: number; stderr: string }[]> => {
    const out = [];
    for (const [args] of failures()) {
      const r = await vdiskfs([...args, '--store', o.store]);
      out.push({ code: r.code, stderr: r.stderr.trim() });
    }
    return out;
  };
  const emptyStdin = (): Promise<RunResult> => sh(`${cli} restore - --as e1 --store ${q(o.store)} < /dev/null`);

  it('every failure class gives the same exit code and the same reason offline and through the mount; replies are per open file', async () => {
    const offline = await runAll();
    expect(offline.map((r) => r.code)).toEqual(failures().map(([, code]) => code));
    for (const r of offline) expect(r.stderr).toMatch(/^vdiskfs: \S/);
    const emptyOff = await emptyStdin();
    await o.mount();
    try {
      const mounted = await runAll();
      expect(mounted).toEqual(offline);
      const emptyOn = await emptyStdin();
      expect([emptyOn.code, emptyOn.stderr]).toEqual([emptyOff.code, emptyOff.stderr]);
      expect(emptyOn.code).toBe(2);
      expect(emptyOn.stderr).toMatch(/no image data on stdin: did the sending command fail\?/);
      // Nothing was left behind by the failures.
      expect((await o.status()).disks.map((d) => d.name)).toEqual(['a']);
      await eachOpenFileHasItsOwnReply();
    } finally {
      await o.unmount();
    }
  });

  it('--json summaries parse, and a restore reports the same snapshot identity offline and through the mount', async () => {
    const json = async (args: string[], input?: string, store = ['--store', o.store]): Promise<Record<string, unknown>> => {
      const r = input ? await sh(`${cli} ${[...args, ...store].map(q).join(' ')} < ${q(input)}`) : await vdiskfs([...args, ...store]);
      expect(r.code, `${args.join(' ')}: ${r.stderr}`).toBe(0);
      return JSON.parse(r.stdout) as Record<string, unknown>;
    };
    const run = async (tag: string): Promise<Record<string, unknown>> => {
      const created = await json(['create', `c${tag}`, '1M', '--json']);
      expect(created).toEqual({ command: `create c${tag} 1M`, message: `created c${tag}` });
      const restored = await json(['restore', full, '--as', `r${tag}`, '--json']);
      const piped = await json(['restore', '-', '--into', `r${tag}`, '--json'], delta);
      expect(piped).toMatchObject({ disk: `r${tag}`, kind: 'delta', mode: 'into' });
      const b = await json(['backup', 'a@s2', '--since', 's1', '-o', join(o.root, `b${tag}.img`), '--json']);
      expect(b).toMatchObject({ disk: 'a', snapshot: 's2', since: 's1', kind: 'delta', bytes: (await stat(delta)).size });
      const list = (await json(['list', '--json'])) as unknown as { name: string; snapshots: { name: string; id: string }[] }[];
      expect(list.find((d) => d.name === 'a')!.snapshots.map((s) => s.name)).toEqual(['s1', 's2']);
      const st = (await json(['status', '--json'])) as { disks: { name: string }[] };
      expect(st.disks.map((d) => d.name)).toContain(`r${tag}`);
      expect(restored.snapId).toBe(list.find((d) => d.name === 'a')!.snapshots[0]!.id);
      expect(b.snapId).toBe(list.find((d) => d.name === 'a')!.snapshots[1]!.id);
      return restored;
    };
    const off = await run('off');
    await o.mount();
    try {
      const on = await run('on');
      expect({ ...on, disk: 'x' }).toEqual({ ...off, disk: 'x' });
      expect(off).toMatchObject({ disk: 'roff', kind: 'full', mode: 'new' });
      // The text summary says the same through the mount as offline (it names the snapshot).
      const t = await vdiskfs(['restore', full, '--as', 'rtext', '--store', o.store]);
      expect(t.stdout.trim()).toBe(`restored full image of snapshot ${String(off.snapId)} as rtext: ${String(off.blocks)} blocks, 0 holes, now rtext@s1`);
    } finally {
      await o.unmount();
    }
    const v = await json(['verify', full, '--json'], undefined, []);
    expect(v).toMatchObject({ ok: true, kind: 'full', totalLength: (await stat(full)).size });
    const ins = await json(['inspect', '-', '--json', '--rows', 'all'], delta, []);
    expect(ins).toMatchObject({ complete: true, header: { kind: 'delta', diskName: 'a', snapName: 's2', baseSnapName: 's1' } });
    const chk = await json(['check', '--json']);
    expect(chk).toMatchObject({ result: 'clean', exitCode: 0, errors: [], leaks: [] });
  });

  it('-p prints progress with the total on stderr when it is not a terminal (also from stdin); -q prints nothing', async () => {
    const size = (await stat(full)).size;
    const total = formatSize(size);
    const cases: [string, string][] = [
      ['backup', `${cli} -p backup a@s1 -o ${q(join(o.root, 'p.img'))} --store ${q(o.store)}`],
      ['restore', `${cli} restore -p ${q(full)} --as p1 --store ${q(o.store)}`],
      ['restore', `${cli} restore -p - --as p2 --store ${q(o.store)} < ${q(full)}`],
      ['verify', `${cli} verify -p - < ${q(full)}`],
    ];
    for (const [label, cmd] of cases) {
      const r = await sh(`${cmd} 2>&1 >/dev/null | cat`); // stderr through a pipe: not a terminal
      expect(r.code, r.stdout).toBe(0);
      expect(lastLine(r.stdout), cmd).toMatch(new RegExp(`^${label}: ${total} of ${total} \\(100\\.0%\\), .*/s, done in \\d+\\.\\ds$`));
    }
    const quiet = await vdiskfs(['-q', 'restore', full, '--as', 'p3', '--store', o.store]);
    expect([quiet.code, quiet.stdout, quiet.stderr]).toEqual([0, '', '']);
    const plain = await vdiskfs(['restore', full, '--as', 'p4', '--store', o.store]);
    expect(plain.stderr).toBe(''); // no progress by default when stderr is not a terminal
    expect(plain.stdout).toMatch(/^restored full image of snapshot/);
  });
});

describe('the mount', () => {
  it('`vdiskfs DIR` still mounts an existing directory; a second mount of the store fails with the store-in-use code', async () => {
    const r = await vdiskfs([o.mp, '--store', o.store]);
    expect(r.code, r.stderr).toBe(0);
    o.pid = (await o.mountInfo())?.pid; // so that unmount waits for the daemon to let go of the store
    try {
      expect(await isMountpoint(o.mp)).toBe(true);
      const missing = await vdiskfs([join(o.root, 'mp2'), '--store', join(o.root, 'other')]);
      expect(missing.code).toBe(2); // a path is mounted, not taken for a mistyped command: a bad mountpoint
      expect(missing.stderr).toMatch(/cannot mount .*mp2: no such directory/);
      const mp2 = await o.scratch('mp2');
      const busy = await vdiskfs([mp2, '--store', o.store]);
      expect(busy.code, busy.stderr).toBe(5); // LOCKED, from the daemon child, not a blanket 1
      expect(busy.stderr).toMatch(/in use/);
      expect(await isMountpoint(mp2)).toBe(false);
    } finally {
      await o.unmount();
    }
  });
});

describe('bash completion (scripts/completion/vdiskfs.bash)', () => {
  it('completes subcommands, disks, snapshots and disk@snap from the store', async () => {
    const bin = await o.scratch('bin');
    await writeFile(join(bin, 'vdiskfs'), `#!/bin/sh\nexec ${cli} "$@"\n`, { mode: 0o755 });
    const complete = async (line: string): Promise<string[]> => {
      const words = line.split(' ');
      const script = `source ${q(join(REPO, 'scripts/completion/vdiskfs.bash'))}
COMP_WORDS=(${words.map(q).join(' ')}); COMP_CWORD=${words.length - 1}; _vdiskfs; printf '%s\\n' "\${COMPREPLY[@]}"`;
      const r = await run('bash', ['-c', script], { env: { ...process.env, PATH: `${bin}:${process.env.PATH ?? ''}` } });
      expect(r.code, r.stderr).toBe(0);
      return r.stdout.split('\n').filter(Boolean).sort();
    };
    const S = `--store ${o.store}`;
    expect(await complete('vdiskfs sta')).toEqual(['status']);
    expect(await complete('vdiskfs del')).toEqual(['delete', 'delete-snapshot']);
    expect(await complete(`vdiskfs snapshot ${S} `)).toContain('a');
    expect(await complete(`vdiskfs rollback ${S} a `)).toEqual(['s1', 's2']);
    expect(await complete(`vdiskfs backup ${S} a@`)).toEqual(['a@s1', 'a@s2']);
    expect(await complete(`vdiskfs backup a@s2 ${S} --since `)).toEqual(['s1', 's2']);
    expect(await complete('vdiskfs mount /tmp --log-level d')).toEqual(['debug']);
  });
});
