/** verify and inspect: images read from a file or stdin, without a store. */
import type { Command } from 'commander';
import { stat } from 'node:fs/promises';
import { verifyImage, inspectImage, formatInspection, type ImageSource } from '../image/index.js';
import { fileChunks } from '../image/fileSource.js';
import { formatSize } from '../util/size.js';
import { invalid, notFound } from '../errors.js';
import { counted, meter, outputOf, summary } from './progress.js';

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

export function registerImageCommands(program: Command): void {
  program
    .command('verify')
    .description('check an image without restoring it (exit 0 good, 7 corrupt)')
    .argument('<image>', "image file, or '-' for stdin")
    .option('--json', 'machine-readable report')
    .action(async (image: string, _o: unknown, cmd: Command) => {
      const out = outputOf(cmd);
      const r = await verifyImage(counted(imageInput(image), meter('verify', out, await fileTotal(image))));
      const h = r.header;
      summary(out, `ok: ${r.kind} image of ${h.diskName}@${h.snapName} (${h.snapId})${h.baseSnapName ? ` since ${h.baseSnapName}` : ''}, ${r.slotCount} blocks of ${formatSize(h.blockSize)}, ${r.zeroCount} holes, ${r.totalLength} bytes`, { ok: true, ...r });
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
