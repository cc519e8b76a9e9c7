/** verify, inspect and merge: images read from files (or stdin), without a store; verify --against compares with one. */
import type { Command } from 'commander';
import { rm, stat } from 'node:fs/promises';
import { verifyImage, inspectImage, formatInspection, type ImageSource } from '../image/index.js';
import { fileChunks } from '../image/fileSource.js';
import { formatSize } from '../util/size.js';
import { corrupt, invalid, notFound } from '../errors.js';
import { ImageChain } from '../image/seekable.js';
import { mergeChain } from '../image/merge.js';
import { compareAgainst } from './against.js';
import { storeDir } from './storeDir.js';
import { counted, meter, outputOf, summary, writeEach } from './progress.js';

/** An image to parse: stdin as a stream, a file through fileChunks (large reads ahead into reused buffers). */
export function imageInput(image: string): ImageSource & AsyncIterable<Uint8Array> {
  return image === '-' ? process.stdin : fileChunks(image);
}

/** The total of an image file (stdin: unknown until its header passes); a missing file is NOT_FOUND. */
export async function fileTotal(image: string): Promise<number | undefined> {
  if (image === '-') return undefined;
  return (await stat(image).catch((e: NodeJS.ErrnoException) => {
    throw e.code === 'ENOENT' ? notFound(`image file ${image}`) : e;
  })).size;
}

/** `disk@snap` as [disk, snap]. */
export function parseSnapRef(ref: string): [string, string] {
  const at = ref.indexOf('@');
  if (at <= 0 || at === ref.length - 1) throw invalid(`expected <disk>@<snapshot>, got '${ref}'`);
  return [ref.slice(0, at), ref.slice(at + 1)];
}

export function registerImageCommands(program: Command): void {
  program
    .command('verify')
    .description('check an image without restoring it (exit 0 good, 7 corrupt); --against: also compare it with the snapshot it should hold')
    .argument('<image>', "image file, or '-' for stdin")
    .option('--against <disk@snap>', 'compare the content with this snapshot of the store (a delta: with the change from its base)')
    .option('--store <dir>', 'store directory (with --against)')
    .option('--json', 'machine-readable report')
    .action(async (image: string, o: { against?: string; store?: string }, cmd: Command) => {
      const out = outputOf(cmd);
      const total = await fileTotal(image);
      const input = (): ImageSource => counted(imageInput(image), meter('verify', out, total));
      if (o.against) {
        const [disk, snap] = parseSnapRef(o.against);
        const c = await compareAgainst(storeDir(o.store), disk, snap, input);
        const h = c.report.header;
        const json = { ok: !c.difference, ...c.report, against: o.against, blocksCompared: c.blocks, ...(c.otherId ? { imageSnapId: c.otherId } : {}), ...(c.difference ? { difference: c.difference } : {}) };
        if (c.difference) {
          if (out.json) summary(out, '', json);
          throw corrupt(`${image} does not hold ${o.against}: ${c.difference.why} (byte ${c.difference.offset})${c.otherId ? `; the image is of snapshot ${c.otherId}` : ''}`);
        }
        summary(out, `ok: ${h.kind} image of ${h.diskName}@${h.snapName} holds what ${o.against} holds${h.kind === 'delta' ? ` since ${h.baseSnapName ?? h.baseSnapId}` : ''} (${c.blocks} blocks compared)${c.otherId ? `; note: the image names snapshot ${c.otherId}` : ''}`, json);
        return;
      }
      const r = await verifyImage(input());
      const h = r.header;
      summary(out, `ok: ${r.kind} image of ${h.diskName}@${h.snapName} (${h.snapId})${h.baseSnapName ? ` since ${h.baseSnapName}` : ''}, ${r.slotCount} blocks of ${formatSize(h.blockSize)}, ${r.zeroCount} holes, ${r.totalLength} bytes`, { ok: true, ...r });
    });

  program
    .command('merge')
    .description('write one full image of the last snapshot of a chain (a full image, then deltas), without a store')
    .argument('<images...>', 'the full image, then each delta in order (files: they are read at any offset)')
    .option('-o, --output <file>', "output file ('-' or absent: stdout)")
    .option('--json', 'machine-readable summary (needs -o FILE)')
    .action(async (images: string[], o: { output?: string }, cmd: Command) => {
      const out = outputOf(cmd);
      const file = o.output && o.output !== '-' ? o.output : undefined;
      if (out.json && !file) throw invalid('--json needs -o FILE: stdout carries the image');
      for (const i of images) await fileTotal(i);
      const chain = await ImageChain.open(images);
      try {
        const p = mergeChain(chain);
        await writeEach(counted(p.chunks({ borrow: true }), meter('merge', out, p.size)), file);
        if (!file) return;
        const h = chain.last;
        summary(out, `merged ${images.length} images into a full image of ${h.diskName}@${h.snapName} (${h.snapId}): ${chain.lbns.length} blocks, ${p.size} bytes to ${file}`, { images, output: file, snapId: h.snapId, diskName: h.diskName, snapName: h.snapName, blocks: chain.lbns.length, bytes: p.size });
      } catch (e) {
        if (file) await rm(file, { force: true }); // a damaged input: no half-written image left behind
        throw e;
      } finally {
        await chain.close();
      }
    });

  program
    .command('inspect')
    .description('print the header and tables of an image')
    .argument('<image>', "image file, or '-' for stdin")
    .option('--verify', 'also check the whole image')
    .option('--rows <n>', "table rows to print (text and JSON), or 'all'", '50')
    .option('--json', 'machine-readable header and tables')
    .action(async (image: string, o: { verify?: boolean; rows: string; json?: boolean }) => {
      const rows = o.rows === 'all' ? Infinity : /^\d+$/.test(o.rows) ? Number(o.rows) : NaN;
      if (Number.isNaN(rows)) throw invalid(`--rows takes a number or 'all', not '${o.rows}'`);
      await fileTotal(image);
      const ins = await inspectImage(imageInput(image), { verify: !!o.verify });
      if (!o.json) return void process.stdout.write(formatInspection(ins, rows));
      const json = { ...ins, slots: ins.slots.slice(0, rows), zeros: ins.zeros.slice(0, rows), complete: ins.slots.length <= rows && ins.zeros.length <= rows };
      process.stdout.write(JSON.stringify(json, null, 2) + '\n');
    });
}
