/** The control commands (create, delete, …) and the store queries (list, status), offline or through the mount. */
import type { Command } from 'commander';
import { readFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { storeDir } from './storeDir.js';
import { BLOCK_STORE_HELP, query, runControl } from './offline.js';
import { outputOf, summary } from './progress.js';
import { renderStatus, storeStatus, type StoreStatus } from '../control/status.js';
import { formatSize, parseSize } from '../util/size.js';
import { parseBlockStore } from '../meta/db.js';

const storeOpt = (c: Command): Command => c.option('--store <dir>', 'store directory');

function control(program: Command, name: string, args: string, desc: string, toLine: (...a: string[]) => string): void {
  const c = program.command(name).description(desc);
  for (const a of args.split(' ').filter(Boolean)) c.argument(a);
  storeOpt(c)
    .option('--json', 'machine-readable result')
    .action(async (...all: unknown[]) => {
      const cmd = all[all.length - 1] as Command;
      const opts = cmd.opts<{ store?: string; recursive?: boolean; destroyNewer?: boolean; blockSize?: string; blockStore?: string }>();
      if (opts.blockSize !== undefined) parseSize(opts.blockSize); // a usage error before the store is opened
      const line = toLine(...cmd.args) + (opts.recursive || opts.destroyNewer ? ' -r' : '') + (opts.blockSize ? ` block-size=${opts.blockSize}` : '');
      const blockStore = opts.blockStore !== undefined ? parseBlockStore(opts.blockStore) : undefined;
      const message = await runControl(storeDir(opts.store), line, blockStore ? { blockStore } : {});
      summary(outputOf(cmd), message, { command: line, message });
    });
  if (name === 'delete') c.option('-r, --recursive', 'also delete its snapshots');
  if (name === 'rollback') c.option('-r, --destroy-newer', 'delete the snapshots newer than <snap> first (then the rollback moves table entries only)');
  if (name === 'create') {
    c.option('--block-size <size>', 'block size, a power of two from 4K to 1M (default 64K)');
    c.option('--block-store <kind>', BLOCK_STORE_HELP);
  }
}

/** A control command that names a target and files: the files' absolute paths go into the line (the daemon has another cwd). */
function withFiles(program: Command, name: string, desc: string, target: string, files: string, filesDesc: string): void {
  storeOpt(program.command(name).description(desc).argument(target).argument(files, filesDesc))
    .option('--json', 'machine-readable result')
    .action(async (first: string, paths: string[], o: { store?: string }, cmd: Command) => {
      const line = `${name} ${first} ${paths.map((p) => resolve(p)).join(' ')}`;
      const message = await runControl(storeDir(o.store), line);
      summary(outputOf(cmd), message, { command: line, message });
    });
}

const readStatusJson = async (vdisk: string): Promise<StoreStatus> => JSON.parse(await readFile(join(vdisk, 'status.json'), 'utf8')) as StoreStatus;

export function registerStoreCommands(program: Command): void {
  control(program, 'create', '<disk> <size>', 'create a thin disk', (d, s) => `create ${d} ${s}`);
  control(program, 'delete', '<disk>', 'delete a disk', (d) => `delete ${d}`);
  control(program, 'resize', '<disk> <size>', 'grow or shrink a disk', (d, s) => `resize ${d} ${s}`);
  control(program, 'snapshot', '<disk> <snap>', 'take an instant snapshot', (d, s) => `snapshot ${d} ${s}`);
  control(program, 'delete-snapshot', '<disk> <snap>', 'delete a snapshot', (d, s) => `delete-snapshot ${d} ${s}`);
  control(program, 'rollback', '<disk> <snap>', 'make the disk exactly the snapshot again', (d, s) => `rollback ${d} ${s}`);
  control(program, 'clone', '<disk> <snap> <newdisk>', 'create a writable disk from a snapshot', (d, s, n) => `clone ${d} ${s} ${n}`);

  withFiles(program, 'attach', 'show a backup image (and deltas after it) read-only at .vdisk/attached/<name> of the mount, without restoring', '<name>', '<images...>', 'the full image, then each delta in order');
  control(program, 'detach', '<name>', 'end an attachment', (n) => `detach ${n}`);
  withFiles(program, 'repair', "rewrite a disk's damaged blocks from an image (chain) or a raw copy; only bytes matching the stored checksums are taken", '<disk>', '<files...>', 'a full image and its deltas in order, or one raw copy of the disk');

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
}
