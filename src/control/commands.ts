/**
 * The control language shared by the `.vdisk/ctl` file and the CLI: one command per line, parsed into a
 * typed command and executed against the registry. Parsing is pure; execution records every command and
 * its result in the persistent history. A failed command changes nothing.
 */
import type { Registry } from '../disk/registry.js';
import type { BatchOp } from '../meta/table.js';
import type { SnapshotRecord } from '../meta/records.js';
import { invalid, errorMessage, errorCode } from '../errors.js';
import { formatSize, parseSize } from '../util/size.js';
import { attachmentsOf } from './attachments.js';
import { repairFrom } from './repair.js';

export type Command =
  | { op: 'create'; disk: string; size: number; blockSize?: number }
  | { op: 'delete'; disk: string; recursive: boolean }
  | { op: 'resize'; disk: string; size: number }
  | { op: 'snapshot'; disk: string; snap: string }
  | { op: 'delete-snapshot'; disk: string; snap: string }
  | { op: 'rollback'; disk: string; snap: string; destroyNewer: boolean }
  | { op: 'clone'; disk: string; snap: string; target: string }
  | { op: 'attach'; name: string; images: string[] }
  | { op: 'detach'; name: string }
  | { op: 'scrub'; disks: string[]; rate: number }
  | { op: 'scrub-stop' }
  | { op: 'repair'; disk: string; files: string[] };

export const USAGE = [
  'create <disk> <size> [block-size=<size>]',
  'delete <disk> [-r]',
  'resize <disk> <size>',
  'snapshot <disk> <snap>',
  'delete-snapshot <disk> <snap>',
  'rollback <disk> <snap> [-r]',
  'clone <disk> <snap> <newdisk>',
  'attach <name> <image> [<delta>...]',
  'detach <name>',
  'scrub <disk>...|all [rate=<size>] | scrub stop',
  'repair <disk> <image-or-copy> [<delta>...]',
];

const MAX_LINE = 4096;

export function parseCommand(line: string): Command {
  if (line.length > MAX_LINE) throw invalid(`command too long (${line.length} characters, at most ${MAX_LINE})`);
  // eslint-disable-next-line no-control-regex
  if (/[\x00-\x08\x0b-\x1f\x7f]/.test(line)) throw invalid('command contains control characters');
  const words = line.trim().split(/\s+/).filter(Boolean);
  const [op, ...args] = words;
  const want = (n: number, usage: string): void => {
    if (args.length !== n) throw invalid(`usage: ${usage}`);
  };
  switch (op) {
    case 'create': {
      const opts = args.filter((a) => a.includes('='));
      const pos = args.filter((a) => !a.includes('='));
      if (pos.length !== 2) throw invalid(`usage: ${USAGE[0]}`);
      let blockSize: number | undefined;
      for (const o of opts) {
        const eq = o.indexOf('=');
        const k = o.slice(0, eq);
        if (k !== 'block-size' && k !== 'bs') throw invalid(`unknown option '${k}' (usage: ${USAGE[0]})`);
        blockSize = parseSize(o.slice(eq + 1));
      }
      return { op, disk: pos[0]!, size: parseSize(pos[1]!), ...(blockSize !== undefined ? { blockSize } : {}) };
    }
    case 'delete': {
      const recursive = args.some((a) => a === '-r' || a === '--recursive');
      const rest = args.filter((a) => a !== '-r' && a !== '--recursive');
      if (rest.length !== 1) throw invalid(`usage: ${USAGE[1]}`);
      return { op, disk: rest[0]!, recursive };
    }
    case 'resize':
      want(2, USAGE[2]!);
      return { op, disk: args[0]!, size: parseSize(args[1]!) };
    case 'snapshot':
    case 'delete-snapshot': {
      const a = splitAt(args);
      if (a.length !== 2) throw invalid(`usage: ${USAGE[op === 'snapshot' ? 3 : 4]}`);
      return { op, disk: a[0]!, snap: a[1]! };
    }
    case 'rollback': {
      const destroyNewer = args.some((a) => a === '-r' || a === '--destroy-newer');
      const a = splitAt(args.filter((x) => x !== '-r' && x !== '--destroy-newer'));
      if (a.length !== 2) throw invalid(`usage: ${USAGE[5]}`);
      return { op, disk: a[0]!, snap: a[1]!, destroyNewer };
    }
    case 'clone': {
      const a = splitAt(args);
      if (a.length !== 3) throw invalid(`usage: ${USAGE[6]}`);
      return { op, disk: a[0]!, snap: a[1]!, target: a[2]! };
    }
    case 'attach':
      if (args.length < 2) throw invalid(`usage: ${USAGE[7]}`);
      return { op, name: args[0]!, images: args.slice(1) };
    case 'detach':
      want(1, USAGE[8]!);
      return { op, name: args[0]! };
    case 'scrub': {
      if (args.length === 1 && args[0] === 'stop') return { op: 'scrub-stop' };
      let rate = 0;
      const disks: string[] = [];
      for (const a of args) {
        if (a.startsWith('rate=')) {
          rate = parseSize(a.slice(5).replace(/\/s$/, ''));
          if (rate <= 0) throw invalid(`scrub rate must be positive (usage: ${USAGE[9]})`);
        } else if (a.includes('=')) throw invalid(`unknown option '${a.slice(0, 40)}' (usage: ${USAGE[9]})`);
        else disks.push(a);
      }
      if (disks.length === 0 || (disks.includes('all') && disks.length > 1)) throw invalid(`usage: ${USAGE[9]}`);
      return { op, disks: disks[0] === 'all' ? [] : disks, rate };
    }
    case 'repair':
      if (args.length < 2) throw invalid(`usage: ${USAGE[10]}`);
      return { op, disk: args[0]!, files: args.slice(1) };
    case undefined:
      throw invalid('empty command');
    default:
      throw invalid(`unknown command '${op.slice(0, 40)}' (commands: ${USAGE.map((u) => u.split(' ')[0]).join(', ')})`);
  }
}

/** Accept `disk@snap` as well as `disk snap`. */
function splitAt(args: string[]): string[] {
  const first = args[0];
  if (!first || !first.includes('@')) return args;
  const parts = first.split('@');
  if (parts.length !== 2) throw invalid(`bad snapshot reference '${first.slice(0, 60)}' (expected <disk>@<snap>)`);
  return [...parts, ...args.slice(1)];
}

/**
 * Run one parsed command. `history(message)`: the operations of its history line, for a command that can
 * commit them in its own batch (snapshot); runLine records the line itself for the others.
 */
export async function execute(reg: Registry, cmd: Command, history?: (message: string) => BatchOp[]): Promise<string> {
  switch (cmd.op) {
    case 'create':
      await reg.create(cmd.disk, cmd.size, cmd.blockSize);
      return `created ${cmd.disk}`;
    case 'delete':
      await reg.delete(cmd.disk, { recursive: cmd.recursive });
      return `deleted ${cmd.disk}`;
    case 'resize':
      await reg.resize(cmd.disk, cmd.size);
      return `resized ${cmd.disk}`;
    case 'snapshot': {
      const message = (s: SnapshotRecord): string => `snapshot ${cmd.disk}@${cmd.snap} id ${s.uid}`;
      return message(await reg.snapshot(cmd.disk, cmd.snap, history && ((s) => history(message(s)))));
    }
    case 'delete-snapshot':
      await reg.deleteSnapshot(cmd.disk, cmd.snap);
      return `deleted snapshot ${cmd.disk}@${cmd.snap}`;
    case 'rollback':
      await reg.rollback(cmd.disk, cmd.snap, { destroyNewer: cmd.destroyNewer });
      return `rolled ${cmd.disk} back to ${cmd.snap}${cmd.destroyNewer ? ' (newer snapshots deleted)' : ''}`;
    case 'clone':
      await reg.clone(cmd.disk, cmd.snap, cmd.target);
      return `cloned ${cmd.disk}@${cmd.snap} as ${cmd.target}`;
    case 'attach': {
      const a = await attachmentsOf(reg).attach(cmd.name, cmd.images);
      const h = a.chain.last;
      return `attached ${cmd.name}: ${h.diskName}@${h.snapName} (${h.snapId}), ${formatSize(h.virtualSize)}, from ${a.paths.join(' ')}`;
    }
    case 'detach':
      await attachmentsOf(reg).detach(cmd.name);
      return `detached ${cmd.name}`;
    case 'scrub': {
      const job = reg.startScrub(cmd.disks, cmd.rate);
      return `scrub of ${job.what} started${cmd.rate ? ` at ${formatSize(cmd.rate)}/s at most` : ''} (progress in .vdisk/status)`;
    }
    case 'repair':
      return repairFrom(reg, cmd.disk, cmd.files);
    case 'scrub-stop': {
      const job = reg.scrubJob;
      if (!job || job.finished) return 'no scrub is running';
      job.stop();
      await job.done;
      return job.summary();
    }
  }
}

/** Parse and run one line, recording it in the history. Throws the typed error on failure. */
export async function runLine(reg: Registry, line: string): Promise<string> {
  // One history line per command, whitespace folded, control characters shown as '?'.
  const folded = line.trim().replace(/\s+/g, ' ').replace(/[\x00-\x1f\x7f]/g, '?');
  const shown = folded.length > 200 ? folded.slice(0, 200) + '…' : folded;
  try {
    const cmd = parseCommand(line);
    let recorded = false;
    const msg = await reg.serialized(() =>
      execute(reg, cmd, (message) => {
        recorded = true;
        return reg.historyOps(shown, 'ok', message);
      }),
    );
    if (!recorded) await reg.recordHistory(shown, 'ok', msg);
    return msg;
  } catch (e) {
    await reg.recordHistory(shown, 'error', errorMessage(e).replace(/[\x00-\x1f\x7f]/g, '?'), errorCode(e)).catch(() => undefined);
    throw e;
  }
}
