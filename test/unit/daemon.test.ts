// The daemon's own rules, without a mount: the default store, the stderr log format, fstab options, and the
// drain that SIGTERM runs (src/fuse/mount.ts, Requests).
import { describe, it, expect } from 'vitest';
import { defaultStoreDir, ROOT_STORE } from '../../src/cli/storeDir.js';
import { formatLine, prettyStderr } from '../../src/log.js';
import { parseMountOptions } from '../../src/cli/mount.js';
import { Requests } from '../../src/fuse/mount.js';
import { E } from '../../src/fuse/errno.js';

describe('default store', () => {
  it('root: /var/lib/vdiskfs; others: $XDG_DATA_HOME/vdiskfs, else ~/.local/share/vdiskfs; $VDISKFS_STORE wins', () => {
    expect(ROOT_STORE).toBe('/var/lib/vdiskfs');
    expect(defaultStoreDir({}, 0, '/root')).toBe('/var/lib/vdiskfs');
    expect(defaultStoreDir({ XDG_DATA_HOME: '/root/xdg' }, 0, '/root')).toBe('/var/lib/vdiskfs');
    expect(defaultStoreDir({ VDISKFS_STORE: '/srv/s' }, 0, '/root')).toBe('/srv/s');
    expect(defaultStoreDir({}, 1000, '/home/u')).toBe('/home/u/.local/share/vdiskfs');
    expect(defaultStoreDir({ XDG_DATA_HOME: '/home/u/data' }, 1000, '/home/u')).toBe('/home/u/data/vdiskfs');
    expect(defaultStoreDir({ XDG_DATA_HOME: 'relative/data' }, 1000, '/home/u')).toBe('/home/u/.local/share/vdiskfs');
    expect(defaultStoreDir({ XDG_DATA_HOME: '/home/u/data', VDISKFS_STORE: '/srv/s' }, 1000, '/home/u')).toBe('/srv/s');
  });
});

describe('log format', () => {
  it('stderr is readable on a terminal, JSON otherwise; VDISKFS_LOG_FORMAT overrides', () => {
    expect(prettyStderr(true, {})).toBe(true);
    expect(prettyStderr(false, {})).toBe(false);
    expect(prettyStderr(true, { VDISKFS_LOG_FORMAT: 'json' })).toBe(false);
    expect(prettyStderr(false, { VDISKFS_LOG_FORMAT: 'pretty' })).toBe(true);
  });

  it('one line per record: time, level, component, message, fields; an error with its stack', () => {
    const time = new Date(2026, 0, 2, 3, 4, 5, 67).getTime();
    const rec = { level: 30, time, pid: 1, hostname: 'h', component: 'mount', store: '/var/lib/vdiskfs', pid2: 7, why: 'two words', msg: 'vdiskfs ready' };
    expect(formatLine(JSON.stringify(rec) + '\n')).toBe('03:04:05.067 INFO  mount: vdiskfs ready store=/var/lib/vdiskfs pid2=7 why="two words"\n');
    const err = { level: 50, time, component: 'fuse', op: 'write', err: { type: 'Error', message: 'boom', stack: 'Error: boom\n    at f (a.js:1:1)' }, msg: 'unexpected error in write' };
    expect(formatLine(JSON.stringify(err))).toBe('03:04:05.067 ERROR fuse: unexpected error in write op=write err=boom\n    at f (a.js:1:1)\n');
    expect(formatLine('not json')).toBe('not json\n');
  });
});

describe('mount options from fstab', () => {
  it('mount(8)\'s generic options, x-… and comment=… are not handed to FUSE; ours are taken', () => {
    const o = parseMountOptions({ mountpoint: '/mnt/v', options: ['rw,nofail,x-systemd.requires=a.service,comment=x,pool_size=10G,allow_other,store=/srv/s'] });
    expect(o.fuseOptions).toEqual(['allow_other']);
    expect(o.poolSize).toBe('10G');
    expect(o.store).toBe('/srv/s');
  });
});

describe('drain (SIGTERM)', () => {
  it('requests in flight are answered, new ones get ENOTCONN at once, close (flush, release) still works', async () => {
    const r = new Requests();
    const pending: (() => void)[] = [];
    const replies: unknown[][] = [];
    const ops = r.wrap({
      write: (_p: string, n: number, cb: (n: number) => void) => void pending.push(() => cb(n)),
      release: (_p: string, cb: (e: number) => void) => void pending.push(() => cb(0)),
      getattr: (_p: string, cb: (e: number, st?: unknown) => void) => cb(0, { size: 1 }),
    });
    ops.write('/d', 4096, (...a) => void replies.push(['write1', ...a]));
    ops.write('/d', 8192, (...a) => void replies.push(['write2', ...a]));
    let drained: number | undefined;
    const d = r.drain().then((n) => (drained = n));
    ops.write('/d', 100, (...a) => void replies.push(['write3', ...a]));
    ops.getattr('/d', (...a) => void replies.push(['getattr', ...a]));
    expect(replies).toEqual([['write3', E.ENOTCONN], ['getattr', E.ENOTCONN]]);
    ops.release('/d', (...a) => void replies.push(['release', ...a]));
    pending.shift()!();
    await new Promise((res) => setImmediate(res));
    expect(drained).toBeUndefined(); // two still in flight
    pending.shift()!();
    pending.shift()!();
    await d;
    expect(drained).toBe(2);
    expect(replies.slice(2)).toEqual([['write1', 4096], ['write2', 8192], ['release', 0]]);
    await r.idle(); // nothing in flight: at once
  });
});
