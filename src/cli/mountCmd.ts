/**
 * `vdiskfs mount`, `vdiskfs unmount`, and the one case without a command name: a first argument that is
 * an existing directory or a path (`vdiskfs /mnt/v`, or mount.fuse's `vdiskfs SOURCE /mnt/v -o …`) mounts it.
 * Anything else that is not a command is refused as a typo (commander suggests the nearest command).
 */
import { Command, Option } from 'commander';
import { spawn } from 'node:child_process';
import { statSync } from 'node:fs';
import { resolve } from 'node:path';
import type { MountArgs } from './mount.js';
import { BLOCK_STORE_HELP } from './offline.js';
import { parseBlockStore } from '../meta/db.js';
import { parseReadahead, parseSize, parseTableCache } from '../util/size.js';
import { invalid } from '../errors.js';

/** pino's levels: anything else is a usage error here, not pino's internal error in the daemon. */
export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];

/** Every value a mount takes, checked before a daemon is started (usage errors: exit 2). */
export function checkMountArgs(raw: MountArgs, parseMountOptions: (a: MountArgs) => MountArgs): void {
  const a = parseMountOptions(raw);
  if (a.logLevel !== undefined && !LOG_LEVELS.includes(a.logLevel)) throw invalid(`bad log level '${a.logLevel}' (one of ${LOG_LEVELS.join(', ')})`);
  if (a.poolSize !== undefined && parseSize(a.poolSize) <= 0) throw invalid('pool size must be positive');
  if (a.readahead !== undefined) parseReadahead(a.readahead);
  if (a.tableCache !== undefined) parseTableCache(a.tableCache);
  if (a.blockStore !== undefined) parseBlockStore(a.blockStore);
}

const isDir = (p: string | undefined): boolean => {
  if (p === undefined || p.startsWith('-')) return false;
  try {
    return statSync(p).isDirectory();
  } catch {
    return false;
  }
};

/** argv with `mount` put in where the arguments name a directory to mount and no command. */
export function withImplicitMount(argv: string[], commands: Set<string>, globals: Set<string>): string[] {
  const args = argv.slice(2);
  let i = 0;
  while (i < args.length && globals.has(args[i]!)) i++;
  const first = args[i];
  if (first === undefined || commands.has(first) || ['-h', '--help', '-V', '--version'].includes(first)) return argv;
  // A path (it has a '/') is never a typo of a command: mount it, and let mount say what is wrong with it.
  const mounts = first.startsWith('-') ? args.slice(i).some(isDir) : isDir(first) || first.includes('/') || isDir(args[i + 1]);
  return mounts ? [...argv.slice(0, 2 + i), 'mount', ...args.slice(i)] : argv;
}

const collect = (v: string, prev: string[]): string[] => [...prev, v];

export function registerMountCommands(program: Command): void {
  program
    .command('mount')
    .description('mount vdiskfs (fstab: `/var/lib/vdiskfs /mnt/v vdiskfs pool_size=10G,nofail 0 0` with mount.vdiskfs)')
    .argument('<mountpoint-or-source>', 'mountpoint (or a source name/store dir when called as mount.fuse does)')
    .argument('[mountpoint]')
    .option('--store <dir>', 'store directory (default $VDISKFS_STORE, else /var/lib/vdiskfs for root, $XDG_DATA_HOME/vdiskfs or ~/.local/share/vdiskfs)')
    .option('--pool-size <size>', 'pool capacity, e.g. 10G (default unlimited)')
    .option('--block-store <kind>', BLOCK_STORE_HELP)
    .option('--ceph-conf <file>', "rados stores: the cluster's ceph.conf (default: the one recorded when the store was created, else /etc/ceph/ceph.conf)")
    .option('--rados-pool <pool>', 'rados stores: the Ceph pool a new store keeps its blocks in (implies --block-store rados)')
    .option('--rados-store <id>', 'rados stores: mount the store that lives in the cluster with this id (status shows it, vdiskfs.…) from this store directory (new or stale); needs --rados-pool')
    .option('--readahead <size>', 'kernel readahead for sequential reads, e.g. 1M (default 1M; 0 keeps the kernel default; needs root)')
    .option('--table-cache <size>', 'memory for cached table entries, e.g. 512M (default 128M, at most 1/16 of the RAM); raise it for random I/O over more than ~28 GiB of 64K blocks or ~4.8 GiB of 8K blocks')
    .option('-f, --foreground', 'stay in the foreground, log to stderr too')
    .option('-o, --options <opts>', 'FUSE and vdiskfs options, comma separated (name=value)', collect, [])
    .addOption(new Option('--log-level <level>', 'log level').choices(LOG_LEVELS).default('info'))
    .addOption(new Option('--daemon-child').hideHelp())
    .action(async (first: string, second: string | undefined, o: { store?: string; poolSize?: string; blockStore?: string; cephConf?: string; radosPool?: string; radosStore?: string; readahead?: string; tableCache?: string; foreground?: boolean; options: string[]; logLevel?: string; daemonChild?: boolean }) => {
      let mountpoint = first;
      let store = o.store;
      if (second !== undefined) {
        mountpoint = second;
        if (!store && first.startsWith('/')) store = first;
      }
      const args: MountArgs = { mountpoint, options: o.options, ...(store ? { store } : {}), ...(o.poolSize ? { poolSize: o.poolSize } : {}), ...(o.blockStore ? { blockStore: o.blockStore } : {}), ...(o.cephConf ? { cephConf: o.cephConf } : {}), ...(o.radosPool ? { radosPool: o.radosPool } : {}), ...(o.radosStore ? { radosStore: o.radosStore } : {}), ...(o.readahead !== undefined ? { readahead: o.readahead } : {}), ...(o.tableCache !== undefined ? { tableCache: o.tableCache } : {}), ...(o.logLevel ? { logLevel: o.logLevel } : {}), ...(o.foreground ? { foreground: true } : {}) };
      // Loaded here, not at start: the FUSE binding costs every other command ~0.1 s.
      const { mountBackground, mountForeground, parseMountOptions, runDaemonChild } = await import('./mount.js');
      checkMountArgs(args, parseMountOptions);
      if (o.daemonChild) return runDaemonChild(args);
      if (o.foreground || o.options.some((x) => x.split(',').includes('foreground'))) return mountForeground({ ...args, foreground: true });
      return mountBackground(args);
    });

  program
    .command('unmount')
    .alias('umount')
    .description('flush and unmount')
    .argument('<mountpoint>')
    .action(async (mp: string) => {
      // fusermount3 (FUSE 3); plain fusermount where only that is installed.
      const unmount = (cmd: string): Promise<number | 'missing'> =>
        new Promise((res) => {
          const c = spawn(cmd, ['-u', resolve(mp)], { stdio: 'inherit' });
          c.on('exit', (n) => res(n ?? 1));
          c.on('error', (e: NodeJS.ErrnoException) => res(e.code === 'ENOENT' ? 'missing' : 1));
        });
      let code = await unmount('fusermount3');
      if (code === 'missing') code = await unmount('fusermount');
      if (code !== 0) process.exit(code === 'missing' ? 1 : code);
    });
}
