/**
 * Giving freed pool-file space back to the host filesystem: fallocate(PUNCH_HOLE|KEEP_SIZE) over runs of
 * freed blocks. Node has no fallocate, so util-linux's `fallocate -p` runs as an asynchronous child (never a
 * synchronous one: the process serves FUSE on its event loop), many ranges per child through `sh -c`, one
 * child at a time per file, dying with the daemon (`setpriv --pdeathsig KILL` where it exists). Why holes
 * and not moving the tail: punching keeps every block where its table entry says it is (no copy, no table
 * change, nothing to make crash-safe); the file keeps its length and only its allocated space shrinks, as
 * `du` shows. Filesystems without hole punching (or a missing `fallocate`) leave the space in the file:
 * punching is then skipped and logged once.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';

/** Ranges per child process (each is one `fallocate` run by the shell). */
const RANGES_PER_CHILD = 256;

const SETPRIV = ['/usr/bin/setpriv', '/bin/setpriv'].find((p) => existsSync(p));

/** Runs of [first pbn, count] from pbns (any order, no duplicates). */
export function pbnRuns(pbns: number[]): [number, number][] {
  const sorted = [...pbns].sort((a, b) => a - b);
  const runs: [number, number][] = [];
  for (const pbn of sorted) {
    const last = runs[runs.length - 1];
    if (last && last[0] + last[1] === pbn) last[1]++;
    else runs.push([pbn, 1]);
  }
  return runs;
}

function run(args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    const argv = SETPRIV ? [SETPRIV, '--pdeathsig', 'KILL', '--', ...args] : args;
    const child = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.on('error', reject);
    child.on('exit', (code, signal) => (code === 0 ? resolve() : reject(new Error(`fallocate: ${err.trim() || `exit ${code ?? signal}`}`))));
  });
}

/** Punch holes over the runs of blocks of `blockSize` bytes in the file at `path`. */
export async function punchRuns(path: string, blockSize: number, runs: [number, number][]): Promise<void> {
  for (let i = 0; i < runs.length; i += RANGES_PER_CHILD) {
    const part = runs.slice(i, i + RANGES_PER_CHILD);
    // sh -c 'f=$0; shift; while [ $# -gt 0 ]; do fallocate -p -o "$1" -l "$2" "$f" || exit 1; shift 2; done' FILE OFF LEN ...
    const script = 'f=$0; while [ $# -gt 0 ]; do fallocate -p -o "$1" -l "$2" -- "$f" || exit 1; shift 2; done';
    await run(['sh', '-c', script, path, ...part.flatMap(([pbn, n]) => [String(pbn * blockSize), String(n * blockSize)])]);
  }
}
