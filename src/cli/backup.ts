/**
 * backup and restore. On a mounted store, backup reads the mount's image files and restore writes into
 * its import/ and restore/ files (viaMount.ts), so the bytes, checks, results and errors are exactly the
 * mount's, and the same as offline.
 */
import type { Command } from 'commander';
import { createReadStream, createWriteStream } from 'node:fs';
import { rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { Readable } from 'node:stream';
import { storeDir } from './storeDir.js';
import { BLOCK_STORE_HELP, checkMountedBlockStore, withRegistry, type StoreOptions } from './offline.js';
import { mountedVdisk, restoreThroughMount } from './viaMount.js';
import { counted, HeaderTap, meter, outputOf, summary, writeEach, type Output } from './progress.js';
import { fileTotal, imageInput, parseSnapRef } from './image.js';
import { parseBlockStore, readMountInfo } from '../meta/db.js';
import { isVdiskError, invalid, notFound } from '../errors.js';
import { checkName } from '../disk/names.js';
import { errorFromErrno } from './exit.js';
import { describeImage, findTarget, producerFor } from '../image/snapshotImage.js';
import { describeRestore, restoreRecorded, type RestoreResult, type RestoreTarget } from '../restore/restore.js';

/**
 * The image's bytes once the first of them arrived (stdin: the sender may need the store first; nothing at
 * all is refused in words that point at the sending side, not as an image truncated at byte 0).
 */
async function firstBytes(image: string): Promise<AsyncIterable<Buffer>> {
  const src = imageInput(image) as AsyncIterable<Buffer>;
  const it = src[Symbol.asyncIterator]();
  const first = await it.next();
  if (first.done || first.value.length === 0) {
    throw invalid(image === '-' ? 'no image data on stdin: did the sending command fail?' : `image file ${image} is empty`);
  }
  return (async function* () {
    yield first.value;
    for (let r = await it.next(); !r.done; r = await it.next()) yield r.value;
  })();
}


async function backup(ref: string, o: { output?: string; since?: string; store?: string }, out: Output): Promise<void> {
  const [disk, snap] = parseSnapRef(ref);
  const dir = storeDir(o.store);
  const file = o.output && o.output !== '-' ? o.output : undefined;
  if (out.json && !file) throw invalid('--json needs -o FILE: stdout carries the image');
  const tap = new HeaderTap();
  let bytes = 0;
  const vdisk = await mountedVdisk(dir);
  if (vdisk) {
    const path = o.since ? join(vdisk, 'deltas', disk, `${o.since}..${snap}`) : join(vdisk, 'copies', disk, snap);
    const size = await stat(path).then((st) => st.size, (e: NodeJS.ErrnoException) => {
      throw errorFromErrno(e.code, `no image ${ref}${o.since ? ` since ${o.since}` : ''} on the mount (${e.code})`);
    });
    await writeEach(counted(imageInput(path), meter('backup', out, size), tap), file);
    bytes = size;
  } else {
    await withRegistry(dir, async (reg) => {
      const p = await producerFor(findTarget(reg, disk, snap, o.since));
      await writeEach(counted(p.chunks({ borrow: true }), meter('backup', out, p.size), tap), file);
      bytes = p.size;
      await reg.recordHistory(`backup ${ref}${o.since ? ` since ${o.since}` : ''}`, 'ok', `${describeImage(p.plan)}: ${bytes} bytes to ${file ?? 'stdout'}`);
    });
  }
  if (!file) return; // the image went to stdout: no summary there
  const h = tap.header;
  const json = { disk, snapshot: snap, snapId: h?.snapId, kind: h?.kind, ...(o.since ? { since: o.since, baseSnapId: h?.baseSnapId } : {}), bytes, output: file };
  summary(out, `backup of ${ref}${o.since ? ` since ${o.since}` : ''} (${h?.kind} image of snapshot ${h?.snapId}): ${bytes} bytes to ${file}`, json);
}

/** The mount's restore file for a target: restore/<disk>[,force][,resize][,create] (fuse/sections.ts). */
const intoFile = (t: RestoreTarget & { mode: 'into' }): string =>
  [t.name, ...(['force', 'resize', 'create'] as const).filter((o) => t[o])].join(',');

interface RestoreOptions {
  as?: string;
  into?: string;
  force?: boolean;
  resize?: boolean;
  create?: boolean;
  store?: string;
  blockStore?: string;
}

async function restore(image: string, o: RestoreOptions, out: Output): Promise<void> {
  if (!!o.as === !!o.into) throw invalid('give exactly one of --as <newdisk> or --into <disk>');
  if (o.as && (o.force || o.resize || o.create)) throw invalid('--force, --resize and --create apply to --into only');
  const target: RestoreTarget = o.as ? { mode: 'new', name: o.as } : { mode: 'into', name: o.into!, force: !!o.force, resize: !!o.resize, create: !!o.create };
  checkName(target.name); // as the store would, before any byte is read
  const dir = storeDir(o.store);
  const storeOpts: StoreOptions = o.blockStore !== undefined ? { blockStore: parseBlockStore(o.blockStore) } : {};
  const total = await fileTotal(image);
  // Open the store (or the mount's file) only once the image's first bytes arrive: in
  // `vdiskfs backup … | vdiskfs restore -` the backup must get the store first.
  const input = await firstBytes(image);
  const report = (r: RestoreResult | undefined): void => {
    if (r) summary(out, `restored ${describeRestore(r)}`, r);
    else summary(out, `restored ${target.name}`, { disk: target.name, mode: target.mode });
  };
  const vdisk = await mountedVdisk(dir);
  if (vdisk) {
    await checkMountedBlockStore(dir, vdisk, storeOpts.blockStore);
    const file = target.mode === 'new' ? join(vdisk, 'import', target.name) : join(vdisk, 'restore', intoFile(target));
    return report(await restoreThroughMount(file, counted(input, meter('restore', out, total)), () => notFound(`disk ${target.name}`)));
  }
  const run = (src: AsyncIterable<Buffer>): Promise<RestoreResult> => withRegistry(dir, (reg) => restoreRecorded(reg, counted(src, meter('restore', out, total)), target), storeOpts);
  try {
    return report(await run(input));
  } catch (e) {
    // `vdiskfs backup … | vdiskfs restore - …` on one unmounted store: the backup holds the store.
    // Spool the stream to a file next to the store and restore once the backup has let go.
    if (image !== '-' || !isVdiskError(e, 'LOCKED') || (await readMountInfo(dir))) throw e;
    const spool = join(dir, `restore-spool-${process.pid}.tmp`);
    if (!out.quiet) process.stderr.write(`vdiskfs: store in use by another vdiskfs process; spooling the image to ${spool} until it is free\n`);
    try {
      await pipeline(Readable.from(input), createWriteStream(spool));
      for (let waited = 0; ; waited += 200) {
        try {
          return report(await run(createReadStream(spool, { highWaterMark: 1024 * 1024 })));
        } catch (e2) {
          if (!isVdiskError(e2, 'LOCKED') || waited > 60_000) throw e2;
          await new Promise((r) => setTimeout(r, 200));
        }
      }
    } finally {
      await rm(spool, { force: true });
    }
  }
}

export function registerBackupCommands(program: Command): void {
  program
    .command('backup')
    .description('write the compacted copy (image) of a snapshot to a file or stdout')
    .argument('<disk@snap>')
    .option('-o, --output <file>', 'output file (default stdout)')
    .option('--since <base>', 'incremental image: only the blocks changed since this older snapshot')
    .option('--store <dir>', 'store directory')
    .option('--json', 'machine-readable summary (needs -o FILE)')
    .action((ref: string, o: { output?: string; since?: string; store?: string }, cmd: Command) => backup(ref, o, outputOf(cmd)));

  program
    .command('restore')
    .description('restore an image: --as NEWDISK (method 1) or --into DISK (method 2)')
    .argument('<image>', "image file, or '-' for stdin")
    .option('--as <newdisk>', 'create a new disk with the original size and block size')
    .option('--into <disk>', 'write the blocks back into an existing disk (required for incremental images)')
    .option('--force', "--into: roll the disk back to the delta's base snapshot first, deleting newer snapshots and later writes")
    .option('--resize', '--into: give the disk the size of a full image of another size')
    .option('--create', '--into: restore a full image as a new disk when the disk does not exist (one command for the first and later images)')
    .option('--store <dir>', 'store directory')
    .option('--block-store <kind>', BLOCK_STORE_HELP)
    .option('--json', 'machine-readable summary')
    .action((image: string, o: RestoreOptions, cmd: Command) => restore(image, o, outputOf(cmd)));
}
