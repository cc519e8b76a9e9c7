/**
 * backup, restore, verify, inspect. On a mounted store, backup reads the mount's image files and restore
 * writes into its import/ and restore/ files, so the bytes and checks are exactly the mount's.
 */
import type { Command } from 'commander';
import { createReadStream, createWriteStream } from 'node:fs';
import { open, readFile, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { Readable, Transform } from 'node:stream';
import { storeDir } from './storeDir.js';
import { BLOCK_STORE_HELP, checkMountedBlockStore, failureReason, withRegistry, type StoreOptions } from './offline.js';
import { parseBlockStore, readMountInfo } from '../meta/db.js';
import { isVdiskError, invalid, VdiskError } from '../errors.js';
import { errorFromErrno } from './exit.js';
import { findTarget, producerFor } from '../image/snapshotImage.js';
import { restoreRecorded, type RestoreTarget } from '../restore/restore.js';
import { verifyImage, inspectImage, formatInspection, type ImageSource } from '../image/index.js';
import { fileChunks } from '../image/fileSource.js';
import { formatSize } from '../util/size.js';
import { mountDevice } from '../util/mountinfo.js';

/** Progress on stderr (when it is a terminal): bytes so far, percent of `total`, rate; at most twice a second. */
function meter(label: string, total?: number): { add(n: number): void; end(): void } {
  const tty = process.stderr.isTTY;
  const started = Date.now();
  let done = 0;
  let last = 0;
  return {
    add(n) {
      done += n;
      const now = Date.now();
      if (tty && now - last > 500) {
        last = now;
        const rate = done / Math.max(0.001, (now - started) / 1000);
        const pct = total ? ` ${((100 * done) / total).toFixed(1)}%` : '';
        process.stderr.write(`\r${label}: ${formatSize(done)}${total ? ` of ${formatSize(total)}` : ''}${pct} ${formatSize(rate)}/s   `);
      }
    },
    end() {
      if (tty) process.stderr.write(`\r${label}: ${formatSize(done)} done${' '.repeat(30)}\n`);
    },
  };
}

function progress(label: string, total?: number): Transform {
  const m = meter(label, total);
  return new Transform({
    transform(chunk: Buffer, _enc, cb) {
      m.add(chunk.length);
      cb(null, chunk);
    },
    flush(cb) {
      m.end();
      cb();
    },
  });
}

/** Wait for the first chunk of a stream; the returned stream replays it and the rest. */
async function afterFirstChunk(src: Readable): Promise<Readable> {
  const it = src[Symbol.asyncIterator]();
  const first = await it.next();
  return Readable.from(
    (async function* () {
      if (first.done) return;
      yield first.value as Buffer;
      for (let r = await it.next(); !r.done; r = await it.next()) yield r.value as Buffer;
    })(),
    { objectMode: false },
  );
}

/**
 * Why a restore through the mount failed, in words: the mount writes one history line per restore
 * (restore/restore.ts restoreRecorded); the newest one for this target since `since` (ms) has the reason.
 */
function restoreReason(vdisk: string, target: RestoreTarget, since: number): Promise<string | undefined> {
  return failureReason(vdisk, `restore ${target.mode === 'new' ? 'as' : 'into'} ${target.name}`, since);
}

function inputStream(image: string): Readable {
  return image === '-' ? process.stdin : createReadStream(image, { highWaterMark: 1024 * 1024 });
}

/** An image to parse: stdin as a stream, a file through fileChunks (large reads ahead into reused buffers). */
function imageInput(image: string): ImageSource {
  return image === '-' ? process.stdin : fileChunks(image);
}

/** Count the bytes passing (no buffering: a chunk is passed on before the next is asked for). */
async function* counted(src: AsyncIterable<Uint8Array>, label: string, total?: number): AsyncGenerator<Buffer> {
  const m = meter(label, total);
  for await (const c of src) {
    const b = Buffer.isBuffer(c) ? c : Buffer.from(c.buffer, c.byteOffset, c.byteLength);
    m.add(b.length);
    yield b;
  }
  m.end();
}

/** Write every chunk to `out`, each written before the next is asked for (so the source may reuse buffers). */
async function writeEach(src: AsyncIterable<Buffer>, out: string | undefined): Promise<void> {
  if (out !== undefined) {
    const fh = await open(out, 'w');
    try {
      let pos = 0;
      for await (const c of src) {
        for (let done = 0; done < c.length;) done += (await fh.write(c, done, c.length - done, pos + done)).bytesWritten;
        pos += c.length;
      }
    } finally {
      await fh.close();
    }
    return;
  }
  const stdout = process.stdout;
  for await (const c of src) {
    await new Promise<void>((resolve, reject) => {
      stdout.write(c, (err) => (err ? reject(err) : resolve()));
    });
  }
}

function parseSnapRef(ref: string): [string, string] {
  const at = ref.indexOf('@');
  if (at <= 0 || at === ref.length - 1) throw invalid(`expected <disk>@<snapshot>, got '${ref}'`);
  return [ref.slice(0, at), ref.slice(at + 1)];
}

/** The mount's `.vdisk` directory when a live daemon serves the store (without opening the store). */
async function mounted(dir: string): Promise<string | undefined> {
  const info = await readMountInfo(dir);
  if (!info) return undefined;
  try {
    process.kill(info.pid, 0);
  } catch {
    return undefined; // a stale file left by a killed daemon
  }
  const mounts = await readFile('/proc/self/mountinfo', 'utf8').catch(() => '');
  return mountDevice(mounts, info.mountpoint) !== undefined ? join(info.mountpoint, '.vdisk') : undefined;
}

export function registerBackupCommands(program: Command): void {
  program
    .command('backup')
    .description('write the compacted copy (image) of a snapshot to a file or stdout')
    .argument('<disk@snap>')
    .option('-o, --output <file>', 'output file (default stdout)')
    .option('--since <base>', 'incremental image: only the blocks changed since this older snapshot')
    .option('--store <dir>', 'store directory')
    .action(async (ref: string, o: { output?: string; since?: string; store?: string }) => {
      const [disk, snap] = parseSnapRef(ref);
      const dir = storeDir(o.store);
      const out = o.output && o.output !== '-' ? o.output : undefined;
      const vdisk = await mounted(dir);
      if (vdisk) {
        const file = o.since ? join(vdisk, 'deltas', disk, `${o.since}..${snap}`) : join(vdisk, 'copies', disk, snap);
        const size = await stat(file).then((st) => st.size, (e: NodeJS.ErrnoException) => {
          throw errorFromErrno(e.code, `no image ${ref}${o.since ? ` since ${o.since}` : ''} on the mount (${e.code})`);
        });
        await writeEach(counted(fileChunks(file), 'backup', size), out);
        return;
      }
      await withRegistry(dir, async (reg) => {
        const t = findTarget(reg, disk, snap, o.since);
        const p = await producerFor(t);
        await writeEach(counted(p.chunks({ borrow: true }), 'backup', p.size), out);
      });
    });

  program
    .command('restore')
    .description('restore an image: --as NEWDISK (method 1) or --into DISK (method 2)')
    .argument('<image>', "image file, or '-' for stdin")
    .option('--as <newdisk>', 'create a new disk with the original size and block size')
    .option('--into <disk>', 'write the blocks back into an existing disk (required for incremental images)')
    .option('--store <dir>', 'store directory')
    .option('--block-store <kind>', BLOCK_STORE_HELP)
    .action(async (image: string, o: { as?: string; into?: string; store?: string; blockStore?: string }) => {
      if (!!o.as === !!o.into) throw invalid('give exactly one of --as <newdisk> or --into <disk>');
      const target: RestoreTarget = o.as ? { mode: 'new', name: o.as } : { mode: 'into', name: o.into! };
      const dir = storeDir(o.store);
      const storeOpts: StoreOptions = o.blockStore !== undefined ? { blockStore: parseBlockStore(o.blockStore) } : {};
      const vdisk = await mounted(dir);
      if (vdisk) {
        await checkMountedBlockStore(dir, vdisk, storeOpts.blockStore);
        const file = join(vdisk, target.mode === 'new' ? 'import' : 'restore', target.name);
        const started = Date.now();
        let bytes = 0;
        const count = new Transform({
          transform(chunk: Buffer, _e, cb) {
            bytes += chunk.length;
            cb(null, chunk);
          },
        });
        try {
          if (image === '-') await pipeline(inputStream(image), count, progress('restore'), createWriteStream(file, { flags: 'w' }));
          else await writeEach(counted(fileChunks(image), 'restore'), file).then(async () => { bytes = (await stat(image)).size; });
          if (bytes === 0) throw new VdiskError('CORRUPT', 'corrupt image: truncated: input ends at byte 0 (empty input)');
        } catch (e) {
          if (isVdiskError(e)) throw e;
          const code = (e as NodeJS.ErrnoException).code ?? 'EIO';
          const reason = (await restoreReason(vdisk, target, started)) ?? `the reason is in ${join(dir, 'vdiskfs.log')}`;
          throw errorFromErrno(code, `restore through the mount failed (${code}): ${reason}`, 'CORRUPT');
        }
        console.log(`restored ${target.name}`);
        return;
      }
      const run = (src: Readable | ImageSource) =>
        withRegistry(dir, async (reg) => {
          const r = await restoreRecorded(reg, src instanceof Readable ? src.pipe(progress('restore')) : counted(src as AsyncIterable<Uint8Array>, 'restore'), target);
          console.log(`restored ${r.kind} image of snapshot ${r.snapId} ${target.mode === 'new' ? 'as' : 'into'} ${r.disk}: ${r.blocks} blocks, ${r.zeros} holes`);
        }, storeOpts);
      // Open the store only once the image's first bytes arrive: in `vdiskfs backup … | vdiskfs restore -`
      // the backup must get the store first.
      const input = image === '-' ? await afterFirstChunk(inputStream(image)) : undefined;
      try {
        await run(input ?? fileChunks(image));
      } catch (e) {
        // `vdiskfs backup … | vdiskfs restore - …` on one unmounted store: the backup holds the store.
        // Spool the stream to a file next to the store and restore once the backup has let go.
        if (!input || !isVdiskError(e, 'LOCKED') || (await readMountInfo(dir))) throw e;
        const spool = join(dir, `restore-spool-${process.pid}.tmp`);
        process.stderr.write(`vdiskfs: store in use by another vdiskfs process; spooling the image to ${spool} until it is free\n`);
        try {
          await pipeline(input, createWriteStream(spool));
          for (let waited = 0; ; waited += 200) {
            try {
              await run(createReadStream(spool, { highWaterMark: 1024 * 1024 }));
              break;
            } catch (e2) {
              if (!isVdiskError(e2, 'LOCKED') || waited > 60_000) throw e2;
              await new Promise((r) => setTimeout(r, 200));
            }
          }
        } finally {
          await rm(spool, { force: true });
        }
      }
    });

  program
    .command('verify')
    .description('check an image without restoring it (exit 0 good)')
    .argument('<image>', "image file, or '-' for stdin")
    .action(async (image: string) => {
      const r = await verifyImage(imageInput(image));
      const h = r.header;
      console.log(`ok: ${r.kind} image of ${h.diskName}@${h.snapName} (${h.snapId})${h.baseSnapName ? ` since ${h.baseSnapName}` : ''}, ${r.slotCount} blocks of ${formatSize(h.blockSize)}, ${r.zeroCount} holes, ${r.totalLength} bytes`);
    });

  program
    .command('inspect')
    .description('print the header and tables of an image')
    .argument('<image>', "image file, or '-' for stdin")
    .option('--verify', 'also check the whole image')
    .option('--rows <n>', 'table rows to print', '50')
    .action(async (image: string, o: { verify?: boolean; rows: string }) => {
      const ins = await inspectImage(imageInput(image), { verify: !!o.verify });
      process.stdout.write(formatInspection(ins, Number(o.rows)));
    });
}
