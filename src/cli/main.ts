#!/usr/bin/env node
/**
 * The vdiskfs command line: the only code that imports commander. Each subcommand is a thin adapter over
 * the core; errors become exit codes in exit.ts.
 */
import { Command, Option } from 'commander';
import { spawn } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { mountBackground, mountForeground, runDaemonChild, type MountArgs } from './mount.js';
import { die } from './exit.js';
import { storeDir } from './storeDir.js';
import { BLOCK_STORE_HELP, query, runControl } from './offline.js';
import { renderStatus, storeStatus, type StoreStatus } from '../control/status.js';
import { formatSize } from '../util/size.js';
import { parseBlockStore } from '../meta/db.js';
import { registerBackupCommands } from './backup.js';
import { registerCheckCommand } from './check.js';

const program = new Command();
program.name('vdiskfs').description('Thin-provisioned virtual disks, snapshots and compacted backups as files (FUSE)').version('0.1.0');

const collect = (v: string, prev: string[]): string[] => [...prev, v];

program
  .command('mount', { isDefault: true })
  .description('mount vdiskfs (fstab: `vdiskfs none MOUNTPOINT -o store=DIR,pool_size=10G,block_store=file`)')
  .argument('<mountpoint-or-source>', 'mountpoint (or a source name/store dir when called as mount.fuse does)')
  .argument('[mountpoint]')
  .option('--store <dir>', 'store directory (default $VDISKFS_STORE, else /var/lib/vdiskfs for root, $XDG_DATA_HOME/vdiskfs or ~/.local/share/vdiskfs)')
  .option('--pool-size <size>', 'pool capacity, e.g. 10G (default unlimited)')
  .option('--block-store <kind>', BLOCK_STORE_HELP)
  .option('--readahead <size>', 'kernel readahead for sequential reads, e.g. 1M (default 1M; 0 keeps the kernel default; needs root)')
  .option('-f, --foreground', 'stay in the foreground, log to stderr too')
  .option('-o, --options <opts>', 'FUSE and vdiskfs options, comma separated (name=value)', collect, [])
  .option('--log-level <level>', 'trace, debug, info, warn, error', 'info')
  .addOption(new Option('--daemon-child').hideHelp())
  .action(async (first: string, second: string | undefined, o: { store?: string; poolSize?: string; blockStore?: string; readahead?: string; foreground?: boolean; options: string[]; logLevel?: string; daemonChild?: boolean }) => {
    let mountpoint = first;
    let store = o.store;
    if (second !== undefined) {
      mountpoint = second;
      if (!store && first.startsWith('/')) store = first;
    }
    const args: MountArgs = { mountpoint, options: o.options, ...(store ? { store } : {}), ...(o.poolSize ? { poolSize: o.poolSize } : {}), ...(o.blockStore ? { blockStore: o.blockStore } : {}), ...(o.readahead !== undefined ? { readahead: o.readahead } : {}), ...(o.logLevel ? { logLevel: o.logLevel } : {}), ...(o.foreground ? { foreground: true } : {}) };
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

const storeOpt = (c: Command): Command => c.option('--store <dir>', 'store directory');

function control(name: string, args: string, desc: string, toLine: (...a: string[]) => string): void {
  const c = program.command(name).description(desc);
  for (const a of args.split(' ').filter(Boolean)) c.argument(a);
  storeOpt(c).action(async (...all: unknown[]) => {
    const cmd = all[all.length - 1] as Command;
    const positional = cmd.args;
    const opts = cmd.opts<{ store?: string; recursive?: boolean; blockSize?: string; blockStore?: string }>();
    const line = toLine(...positional) + (opts.recursive ? ' -r' : '') + (opts.blockSize ? ` block-size=${opts.blockSize}` : '');
    const blockStore = opts.blockStore !== undefined ? parseBlockStore(opts.blockStore) : undefined;
    console.log(await runControl(storeDir(opts.store), line, blockStore ? { blockStore } : {}));
  });
  if (name === 'delete') c.option('-r, --recursive', 'also delete its snapshots');
  if (name === 'create') {
    c.option('--block-size <size>', 'block size, a power of two from 4K to 1M (default 64K)');
    c.option('--block-store <kind>', BLOCK_STORE_HELP);
  }
}

control('create', '<disk> <size>', 'create a thin disk', (d, s) => `create ${d} ${s}`);
control('delete', '<disk>', 'delete a disk', (d) => `delete ${d}`);
control('resize', '<disk> <size>', 'grow or shrink a disk', (d, s) => `resize ${d} ${s}`);
control('snapshot', '<disk> <snap>', 'take an instant snapshot', (d, s) => `snapshot ${d} ${s}`);
control('delete-snapshot', '<disk> <snap>', 'delete a snapshot', (d, s) => `delete-snapshot ${d} ${s}`);
control('rollback', '<disk> <snap>', 'make the disk exactly the snapshot again', (d, s) => `rollback ${d} ${s}`);
control('clone', '<disk> <snap> <newdisk>', 'create a writable disk from a snapshot', (d, s, n) => `clone ${d} ${s} ${n}`);

const readStatusJson = async (vdisk: string): Promise<StoreStatus> => JSON.parse(await readFile(join(vdisk, 'status.json'), 'utf8')) as StoreStatus;

storeOpt(program.command('list').description('list disks and snapshots')).option('--json', 'machine-readable').action(async (o: { store?: string; json?: boolean }) => {
  const st = await query(storeDir(o.store), (reg) => storeStatus(reg), readStatusJson);
  if (o.json) return console.log(JSON.stringify(st.disks, null, 2));
  for (const d of st.disks) {
    console.log(`${d.name}\t${formatSize(d.size)}\t${formatSize(d.allocatedBytes)} allocated\t${d.snapshots.length} snapshot(s)`);
    for (const s of d.snapshots) console.log(`${d.name}@${s.name}\t${s.created}\t${formatSize(s.heldBytes)} held\t${s.id}`);
  }
});

storeOpt(program.command('status').description('disks, snapshots and pool use')).option('--json', 'machine-readable').action(async (o: { store?: string; json?: boolean }) => {
  const st = await query(storeDir(o.store), (reg) => storeStatus(reg), readStatusJson);
  process.stdout.write(o.json ? JSON.stringify(st, null, 2) + '\n' : renderStatus(st));
});

registerBackupCommands(program);
registerCheckCommand(program);

program.parseAsync(process.argv).catch(die);
