/**
 * `vdiskfs replicate DISK --to-store DIR | --to-command CMD`: keep a standby copy of a disk in step (the
 * snapshot family's replication, as `zfs send -i | zfs recv` or rbd-mirror's snapshot mode).
 *
 * One run: take snapshot `<prefix>-<UTC time>` of the disk; pick the base, the newest snapshot the other
 * side holds (--to-store: the newest source snapshot whose identity the target disk has; --to-command: the
 * newest earlier `<prefix>-` snapshot, the last one sent); stream `vdiskfs backup DISK@new --since base`
 * (a full image when there is no base) into `vdiskfs restore - --into TARGET --create` or into the command;
 * then prune the oldest `<prefix>-` snapshots beyond --keep on both sides. When the send fails, the new
 * snapshot is deleted again and the target is unchanged (a restore commits whole or not at all).
 * The two ends are child processes of this CLI, so each side works the same mounted or not, and through
 * ssh the far side needs nothing but the pipe. One run per disk at a time (a lock file in the store).
 */
import type { Command } from 'commander';
import { spawn, type ChildProcess } from 'node:child_process';
import { open, readFile, rm } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { Transform } from 'node:stream';
import { storeDir } from './storeDir.js';
import { query, runControl } from './offline.js';
import { outputOf, summary, type Output } from './progress.js';
import { errorFromExit } from './exit.js';
import { storeStatus, type SnapshotStatus, type StoreStatus } from '../control/status.js';
import { checkName } from '../disk/names.js';
import { busy, errorMessage, invalid, notFound } from '../errors.js';
import { formatSize } from '../util/size.js';

export interface ReplicateOptions {
  toStore?: string;
  as?: string;
  toCommand?: string;
  since?: string;
  prefix: string;
  keep: string;
  force?: boolean;
  store?: string;
}

const readStatusJson = async (vdisk: string): Promise<StoreStatus> => JSON.parse(await readFile(join(vdisk, 'status.json'), 'utf8')) as StoreStatus;

/** The disk's snapshots, oldest first; undefined when the store has no such disk. */
async function snapshotsOf(dir: string, disk: string): Promise<SnapshotStatus[] | undefined> {
  const st = await query(dir, (reg) => storeStatus(reg), readStatusJson);
  return st.disks.find((d) => d.name === disk)?.snapshots;
}

/** `<prefix>-YYYYMMDD-HHMMSS` in UTC, with `.2`, `.3`, … when a run in the same second took the name. */
export function snapshotName(prefix: string, now: Date, taken: ReadonlySet<string>): string {
  const stamp = now.toISOString().replace(/[-:]/g, '').replace('T', '-').slice(0, 15);
  let name = `${prefix}-${stamp}`;
  for (let i = 2; taken.has(name); i++) name = `${prefix}-${stamp}.${i}`;
  return name;
}

/** Snapshots this command made with the prefix (others, the user's, are never pruned). */
export const isReplicaName = (prefix: string, name: string): boolean => new RegExp(`^${prefix.replace(/[.]/g, '\\.')}-\\d{8}-\\d{6}(\\.\\d+)?$`).test(name);

/** The newest source snapshot whose identity the target holds (the last common snapshot). */
export function lastCommon(source: readonly SnapshotStatus[], target: readonly SnapshotStatus[]): SnapshotStatus | undefined {
  const ids = new Set(target.map((s) => s.id));
  return [...source].reverse().find((s) => ids.has(s.id));
}

/** The oldest replica snapshots beyond `keep` (the newest `keep` stay, among them the one just sent). */
export function toPrune(prefix: string, snaps: readonly SnapshotStatus[], keep: number): string[] {
  const ours = snaps.filter((s) => isReplicaName(prefix, s.name)).map((s) => s.name);
  return ours.slice(0, Math.max(0, ours.length - keep));
}

/** One replicate run per disk and store at a time (cron may start the next before one ends). */
async function lock(dir: string, disk: string): Promise<() => Promise<void>> {
  const file = join(dir, `replicate-${disk}.lock`);
  for (let attempt = 0; ; attempt++) {
    try {
      const fh = await open(file, 'wx');
      await fh.writeFile(`${process.pid}\n`);
      await fh.close();
      return () => rm(file, { force: true });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST' || attempt > 0) throw e;
      const pid = Number((await readFile(file, 'utf8').catch(() => '')).trim());
      if (pid > 0 && alive(pid)) throw busy(`replicate of ${disk} is already running (pid ${pid}, ${file})`);
      await rm(file, { force: true }); // left by a run that was killed
    }
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

interface Ended {
  code: number;
  stderr: string;
  stdout: string;
}

function collect(child: ChildProcess, keepStdout: boolean): Promise<Ended> {
  let stderr = '';
  let stdout = '';
  child.stderr?.on('data', (b: Buffer) => (stderr = (stderr + b.toString('utf8')).slice(-64 * 1024)));
  if (keepStdout) child.stdout?.on('data', (b: Buffer) => (stdout = (stdout + b.toString('utf8')).slice(-1024 * 1024)));
  return new Promise((res, rej) => {
    child.on('error', rej);
    child.on('close', (code, signal) => res({ code: code ?? (signal ? 128 : 1), stderr, stdout }));
  });
}

/** The error a child reported (its last `vdiskfs: …` line), typed again from its exit code. */
function childError(what: string, e: Ended): Error {
  const lines = e.stderr.trim().split('\n').filter(Boolean);
  const own = lines.filter((l) => l.startsWith('vdiskfs: ')).pop()?.slice('vdiskfs: '.length);
  return errorFromExit(e.code, `${what}: ${own ?? lines.pop() ?? `exit status ${e.code}`}`);
}

interface Sent {
  bytes: number;
  restored?: unknown;
}

/** Stream the image from a backup child into the receiver; the cause of a failure is reported, not its echo. */
async function send(backupArgs: string[], receiver: ChildProcess, receiverName: string, keepStdout: boolean): Promise<Sent> {
  const cli = [process.argv[1]!];
  const backup = spawn(process.execPath, [...cli, '-q', 'backup', ...backupArgs], { stdio: ['ignore', 'pipe', 'pipe'] });
  const ends = Promise.all([collect(backup, false), collect(receiver, keepStdout)]);
  let bytes = 0;
  const count = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      bytes += chunk.length;
      cb(null, chunk);
    },
  });
  const piped = pipeline(backup.stdout!, count, receiver.stdin!).catch((e: unknown) => e); // EPIPE when the receiver refused
  const [b, r] = await ends;
  await piped;
  // The backup's own failure (not the broken pipe a refusing receiver causes) is the cause.
  if (b.code !== 0 && !/EPIPE|stream (was )?destroyed|write after end/i.test(b.stderr)) throw childError('backup', b);
  if (r.code !== 0) throw childError(receiverName, r);
  if (b.code !== 0) throw childError('backup', b);
  return { bytes, ...(keepStdout && r.stdout.trim() ? { restored: JSON.parse(r.stdout) as unknown } : {}) };
}

async function prune(dir: string, disk: string, prefix: string, keep: number, warn: (m: string) => void): Promise<string[]> {
  const snaps = (await snapshotsOf(dir, disk)) ?? [];
  const pruned: string[] = [];
  for (const name of toPrune(prefix, snaps, keep)) {
    try {
      await runControl(dir, `delete-snapshot ${disk} ${name}`);
      pruned.push(name);
    } catch (e) {
      warn(`kept ${disk}@${name}: ${errorMessage(e)}`);
    }
  }
  return pruned;
}

async function replicate(disk: string, o: ReplicateOptions, out: Output): Promise<void> {
  checkName(disk);
  if (!o.toStore === !o.toCommand) throw invalid('give exactly one of --to-store <dir> or --to-command <cmd>');
  if (o.as !== undefined && !o.toStore) throw invalid('--as names the disk in --to-store; a --to-command names it in its own command');
  if (o.force && !o.toStore) throw invalid('--force applies to --to-store; give a --to-command its own `restore --force`');
  checkName(o.prefix, 'snapshot prefix');
  const keep = Number(o.keep);
  if (!Number.isInteger(keep) || keep < 1) throw invalid(`--keep must be a whole number of at least 1, not ${JSON.stringify(o.keep)}`);
  const src = storeDir(o.store);
  const target = o.as ?? disk;
  checkName(target);
  const tgt = o.toStore !== undefined ? resolve(o.toStore) : undefined;
  if (tgt !== undefined && tgt === src && target === disk) throw invalid(`--to-store is the source store and --as the same disk ${disk}`);
  const warn = (m: string): void => {
    if (!out.quiet) process.stderr.write(`vdiskfs: warning: ${m}\n`);
  };

  const unlock = await lock(src, disk);
  try {
    const snaps = await snapshotsOf(src, disk);
    if (!snaps) throw notFound(`disk ${disk}`);
    let base: SnapshotStatus | undefined;
    if (o.since !== undefined) {
      base = snaps.find((s) => s.name === o.since);
      if (!base) throw notFound(`snapshot ${disk}@${o.since}`);
    } else if (tgt !== undefined) {
      const there = await snapshotsOf(tgt, target);
      base = there ? lastCommon(snaps, there) : undefined;
      if (there && !base && !o.force) {
        throw invalid(`disk ${target} in ${tgt} has no snapshot in common with ${disk}: add --force to replace it with a full copy`);
      }
    } else {
      base = [...snaps].reverse().find((s) => isReplicaName(o.prefix, s.name));
    }

    const name = snapshotName(o.prefix, new Date(), new Set(snaps.map((s) => s.name)));
    await runControl(src, `snapshot ${disk} ${name}`);
    let sent: Sent;
    try {
      const backupArgs = [`${disk}@${name}`, ...(base ? ['--since', base.name] : []), '--store', src];
      if (tgt !== undefined) {
        const args = ['-q', 'restore', '-', '--into', target, '--create', ...(o.force ? ['--force', '--resize'] : []), '--store', tgt, '--json'];
        const receiver = spawn(process.execPath, [process.argv[1]!, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
        sent = await send(backupArgs, receiver, `restore into ${tgt}`, true);
      } else {
        const env = { ...process.env, VDISKFS_DISK: disk, VDISKFS_SNAPSHOT: name, VDISKFS_BASE: base?.name ?? '' };
        const receiver = spawn('/bin/sh', ['-c', o.toCommand!], { stdio: ['pipe', 'inherit', 'pipe'], env });
        sent = await send(backupArgs, receiver, 'the --to-command', false);
      }
    } catch (e) {
      await runControl(src, `delete-snapshot ${disk} ${name}`).catch((e2: unknown) => warn(`could not delete ${disk}@${name}: ${errorMessage(e2)}`));
      throw e;
    }

    const pruned = { source: await prune(src, disk, o.prefix, keep, warn), ...(tgt !== undefined ? { target: await prune(tgt, target, o.prefix, keep, warn) } : {}) };
    const to = tgt !== undefined ? `${tgt}:${target}` : 'the command';
    const kind = base ? `delta since ${base.name}` : 'full image';
    const prunedText = pruned.source.length + (pruned.target?.length ?? 0) ? `; pruned ${[...pruned.source, ...(pruned.target ?? []).map((n) => `${n} (target)`)].join(', ')}` : '';
    summary(out, `replicated ${disk}@${name} to ${to} (${kind}, ${formatSize(sent.bytes)} sent)${prunedText}`, {
      disk,
      snapshot: name,
      kind: base ? 'delta' : 'full',
      ...(base ? { base: base.name } : {}),
      bytes: sent.bytes,
      ...(tgt !== undefined ? { target: { store: tgt, disk: target }, restored: sent.restored } : { command: o.toCommand }),
      pruned,
    });
  } finally {
    await unlock();
  }
}

export function registerReplicateCommand(program: Command): void {
  program
    .command('replicate')
    .description('snapshot a disk and send what changed since the last common snapshot to a standby (a store, or a command such as ssh)')
    .argument('<disk>')
    .option('--to-store <dir>', 'the standby store (mounted or not): restore there into the disk, creating it the first time')
    .option('--as <name>', 'the disk name in --to-store (default: the same name)')
    .option('--to-command <cmd>', "a shell command that reads the image on stdin, e.g. 'ssh standby vdiskfs restore - --into db1 --create'")
    .option('--since <snap>', 'the base snapshot (default: the last common one; for --to-command the last one sent)')
    .option('--prefix <name>', 'name prefix of the snapshots replicate takes and prunes', 'repl')
    .option('--keep <n>', 'how many of those snapshots to keep on each side', '3')
    .option('--force', 'roll the standby back to the last common snapshot when it changed since (fail-back), or replace it with a full copy when there is none')
    .option('--store <dir>', 'the source store directory')
    .option('--json', 'machine-readable summary')
    .action((disk: string, o: ReplicateOptions, cmd: Command) => replicate(disk, o, outputOf(cmd)));
}
