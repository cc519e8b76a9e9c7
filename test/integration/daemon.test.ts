// The daemon as a system service sees it: SIGHUP (logrotate) reopens the log and keeps the mount, SIGTERM
// while dd writes drains and leaves a clean store, the mount helper (mount -t vdiskfs, fstab) with the store
// as the mount's source, the systemd unit, and a failed mount that creates nothing.

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readFile, rename, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { SERVER_ENV, SERVER_NODE_FLAGS } from '../../src/cli/mount.js';
import { CLI, M, REPO, VdiskMount, ddBytes, duBytes, expectSame, isAlive, isMountpoint, q, randomBuffer, readRange, requireBuild, run, sh, shOk, sleep, teardownAll, vdiskfs, waitForExit, type RunResult } from './helpers.js';

const HELPER = join(REPO, 'scripts/system/mount.vdiskfs');
const INSTALL = join(REPO, 'scripts/system/install.sh');

beforeAll(() => requireBuild());
afterAll(async () => {
  await teardownAll();
});

/** Poll (bounded) until check() holds; returns whether it did. Not an assertion on time. */
async function until(check: () => Promise<boolean>, maxMs = 20_000): Promise<boolean> {
  for (const end = Date.now() + maxMs; Date.now() < end; await sleep(50)) if (await check()) return true;
  return check();
}

const logLines = async (file: string): Promise<{ level: number; msg: string }[]> =>
  (await readFile(file, 'utf8').catch(() => ''))
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as { level: number; msg: string });

describe('signals', () => {
  it('SIGHUP reopens the log at its path (logrotate: mv, then HUP) and keeps the mount', async () => {
    const m = await VdiskMount.create();
    const log = join(m.store, 'vdiskfs.log');
    await m.ctlOk('create d 4M');
    await rename(log, log + '.1');
    process.kill(m.pid!, 'SIGHUP');
    expect(await until(async () => (await logLines(log)).some((l) => l.msg === 'log file reopened (SIGHUP)')), 'new vdiskfs.log').toBe(true);
    expect(await isMountpoint(m.mp)).toBe(true);
    expect(isAlive(m.pid!)).toBe(true);
    expect((await m.ctl('delete nosuch')).code).toBe('ENOENT'); // logged, into the new file
    expect(await until(async () => (await logLines(log)).some((l) => l.msg === 'write refused'))).toBe(true);
    const old = await logLines(log + '.1');
    expect(old.some((l) => l.msg === 'vdiskfs ready')).toBe(true);
    expect(old.some((l) => l.msg === 'write refused' || l.msg.includes('SIGHUP'))).toBe(false);
    const st = await m.status();
    expect(st.log).toBe(log);
    expect(await m.statusText()).toContain(`log: ${log}\n`);
    await m.unmount();
  });

  it('SIGTERM while dd writes a disk: dd completes or gets ENOTCONN, every byte it wrote is kept, check is clean', async () => {
    const m = await VdiskMount.create();
    await m.ctlOk('create w 1G');
    const scratch = await m.scratch('term');
    const chunk = randomBuffer(77, 16 * M);
    await writeFile(join(scratch, 'chunk'), chunk);
    // 64 x 16 MiB through dd in 1 MiB writes; stopped once 32 MiB are in.
    const dd = new Promise<RunResult>((res) => {
      const c = spawn('bash', ['-c', `for i in $(seq 64); do cat chunk; done | dd of=${q(m.disk('w'))} bs=1M iflag=fullblock conv=notrunc`], { cwd: scratch, stdio: ['ignore', 'ignore', 'pipe'] });
      let stderr = '';
      c.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      c.on('close', (code, signal) => res({ code: code ?? 1, signal, stdout: '', stderr }));
    });
    expect(await until(async () => (await duBytes(m.disk('w'))) >= 32 * M), 'dd started').toBe(true);
    const pid = m.pid!;
    process.kill(pid, 'SIGTERM');
    const r = await dd;
    expect(await waitForExit(pid), 'daemon exits after SIGTERM').toBe(true);
    m.pid = undefined;
    if (r.code !== 0) {
      expect(r.stderr).toMatch(/error writing .*Transport endpoint is not connected/);
      expect(r.stderr).not.toMatch(/Input\/output error/);
    }
    const written = ddBytes(r);
    expect(written).toBeGreaterThanOrEqual(32 * M);
    expect(await isMountpoint(m.mp)).toBe(false);
    const log = await logLines(join(m.store, 'vdiskfs.log'));
    expect(log.filter((l) => l.level >= 50), 'errors in the log').toEqual([]);
    expect(log.at(-1)!.msg).toBe('stopped: flushed, unmounted and closed');
    const check = await vdiskfs(['check', '--store', m.store]);
    expect(check.code, check.stdout + check.stderr).toBe(0);
    await m.mount();
    for (let off = 0; off < written; off += chunk.length) {
      const n = Math.min(chunk.length, written - off);
      expectSame(await readRange(m.disk('w'), off, n), chunk.subarray(0, n), `bytes at ${off}`);
    }
    await m.unmount();
  });
});

/** The helper mount(8) would run: setup's installed one when it is this checkout's, else the repository's. */
async function installedHelper(): Promise<string | undefined> {
  for (const p of ['/sbin/mount.vdiskfs', '/usr/sbin/mount.vdiskfs']) if (existsSync(p) && (await readFile(p, 'utf8')).includes(`'${CLI}'`)) return p;
  return undefined;
}

describe('mount helper (mount.vdiskfs)', () => {
  it('mounts STORE on MOUNTPOINT with -o options; the mount\'s source is the store; umount stops the daemon', async () => {
    const m = await VdiskMount.unmounted();
    const installed = await installedHelper();
    let r: RunResult;
    if (installed) {
      r = await run('mount', ['-t', 'vdiskfs', m.store, m.mp, '-o', 'pool_size=16M']);
    } else {
      // As installed, less the absolute paths: `vdiskfs` from PATH.
      console.warn(`daemon.test.ts: no /sbin/mount.vdiskfs of this checkout (scripts/setup.sh installs it): running ${HELPER} directly`);
      const bin = await m.scratch('bin');
      await symlink(CLI, join(bin, 'vdiskfs'));
      r = await run('sh', [HELPER, m.store, m.mp, '-o', 'rw,pool_size=16M'], { env: { ...process.env, PATH: `${bin}:${process.env.PATH}` } });
    }
    expect(r.code, r.stderr).toBe(0);
    m.pid = (await m.mountInfo())?.pid;
    // The daemon runs with the node flags of a served mount (cli/mount.ts SERVER_NODE_FLAGS).
    const cmdline = (await readFile(`/proc/${m.pid}/cmdline`, 'utf8')).split('\0');
    for (const f of SERVER_NODE_FLAGS) expect(cmdline.indexOf(f), cmdline.join(' ')).toBeGreaterThan(0);
    expect(cmdline.indexOf(SERVER_NODE_FLAGS[0]!)).toBeLessThan(cmdline.indexOf('mount'));
    // ... and the malloc settings (cli/mount.ts SERVER_ENV), where the caller did not set its own.
    const environ = (await readFile(`/proc/${m.pid}/environ`, 'utf8')).split('\0');
    for (const [k, v] of Object.entries(SERVER_ENV)) expect(environ, k).toContain(`${k}=${process.env[k] ?? v}`);
    expect((await shOk(`findmnt -n -o SOURCE,FSTYPE ${q(m.mp)}`)).trim().split(/\s+/)).toEqual([m.store, 'fuse.vdiskfs']);
    expect((await m.status()).pool.capacity).toBe(16 * M);
    await shOk(`umount ${q(m.mp)}`);
    expect(await waitForExit(m.pid!)).toBe(true);
    m.pid = undefined;
    if (installed) {
      // An fstab line with type vdiskfs (mount -T: another fstab file), with options mount(8) and systemd keep.
      const fstab = join(m.root, 'fstab');
      await writeFile(fstab, `${m.store} ${m.mp} vdiskfs pool_size=8M,nofail,x-systemd.device-timeout=5s 0 0\n`);
      const f = await run('mount', ['-T', fstab, m.mp]);
      expect(f.code, f.stderr).toBe(0);
      m.pid = (await m.mountInfo())?.pid;
      expect((await m.status()).pool.capacity).toBe(8 * M);
      await shOk(`umount ${q(m.mp)}`);
      expect(await waitForExit(m.pid!)).toBe(true);
      m.pid = undefined;
    }
    // -f (fake) mounts nothing and creates nothing.
    const fake = await run('sh', [HELPER, join(m.root, 'no-store'), m.mp, '-f', '-o', 'rw']);
    expect(fake.code, fake.stderr).toBe(0);
    expect(await isMountpoint(m.mp)).toBe(false);
    expect(existsSync(join(m.root, 'no-store'))).toBe(false);
  });
});

describe('installation', () => {
  it('install.sh writes the helper and the unit with absolute paths, once (quiet when nothing changes)', async () => {
    const m = await VdiskMount.unmounted();
    const root = join(m.root, 'sysroot');
    const first = await run('bash', [INSTALL, '--root', root, '--systemd', 'yes']);
    expect(first.code, first.stderr).toBe(0);
    expect(first.stdout).toContain(`installed ${root}/sbin/mount.vdiskfs`);
    expect(first.stdout).toContain(`installed ${root}/etc/systemd/system/vdiskfs@.service`);
    const again = await run('bash', [INSTALL, '--root', root, '--systemd', 'yes']);
    expect(again).toMatchObject({ code: 0, stdout: '', stderr: '' });
    const unit = await readFile(join(root, 'etc/systemd/system/vdiskfs@.service'), 'utf8');
    expect(unit).toContain(`ExecStart=${process.execPath} ${CLI} mount %f`);
    expect((await shOk(`stat -c %a ${q(join(root, 'sbin/mount.vdiskfs'))}`)).trim()).toBe('755');
    const hasAnalyze = (await sh('command -v systemd-analyze')).code === 0;
    if (!hasAnalyze) {
      console.warn('daemon.test.ts: systemd-analyze not installed: unit verification SKIPPED');
      return;
    }
    // Works without a running systemd: loads the template next to the instance name and checks it.
    const v = await run('systemd-analyze', ['verify', join(root, 'etc/systemd/system/vdiskfs@mnt-v.service')]);
    expect(v, 'systemd-analyze verify').toMatchObject({ code: 0, stderr: '' });
  });
});

describe('a failed mount creates nothing', () => {
  it('no store directory and no parent of it is left, whatever failed', async () => {
    const m = await VdiskMount.unmounted();
    const store = join(m.root, 'a', 'b', 'store');
    const bad = await vdiskfs(['mount', m.mp, '--store', store, '-o', 'no_such_option_xyz']);
    expect(bad.code).not.toBe(0);
    expect(existsSync(join(m.root, 'a'))).toBe(false);
    const missing = await vdiskfs(['mount', join(m.root, 'nope'), '--store', store]);
    expect(missing.code).not.toBe(0);
    expect(missing.stderr).toMatch(/cannot mount .*nope: no such directory/);
    expect(existsSync(join(m.root, 'a'))).toBe(false);
    expect(await isMountpoint(m.mp)).toBe(false);
  });
});
