/**
 * What a command prints besides its result: progress on stderr and the -p / -q / --json choices.
 * Progress shows by default on a terminal (one line redrawn); -p shows it anywhere (a terminal, or a log
 * or pipe: one line at most every second and a final line with the total); -q shows none and no summary.
 */
import type { Command } from 'commander';
import { writeFileDurably } from '../image/fileSink.js';
import { decodeHeader, HEADER_LENGTH, MAGIC, type ImageHeader } from '../image/index.js';
import { formatSize } from '../util/size.js';

export interface Output {
  progress: boolean;
  quiet: boolean;
  json: boolean;
}

/** The global -p / -q with the command's own --json. */
export function outputOf(cmd: Command): Output {
  const o = cmd.optsWithGlobals<{ progress?: boolean; quiet?: boolean; json?: boolean }>();
  return { progress: !!o.progress && !o.quiet, quiet: !!o.quiet, json: !!o.json };
}

/** Print a command's summary: JSON with --json (even with -q: it was asked for), else text unless -q. */
export function summary(out: Output, text: string, json: unknown): void {
  if (out.json) process.stdout.write(JSON.stringify(json, null, 2) + '\n');
  else if (!out.quiet) process.stdout.write(text + '\n');
}

export interface Meter {
  add(n: number): void;
  end(): void;
  total?: number;
}

export function meter(label: string, out: Output, total?: number): Meter {
  const tty = !!process.stderr.isTTY;
  const show = out.progress || (!out.quiet && tty);
  const started = Date.now();
  let done = 0;
  let last = started;
  const line = (now: number): string => {
    const t = m.total;
    const rate = done / Math.max(0.001, (now - started) / 1000);
    const pct = t ? ` (${((100 * done) / t).toFixed(1)}%)` : '';
    return `${label}: ${formatSize(done)}${t !== undefined ? ` of ${formatSize(t)}` : ''}${pct}, ${formatSize(rate)}/s`;
  };
  const m: Meter = {
    ...(total !== undefined ? { total } : {}),
    add(n) {
      done += n;
      const now = Date.now();
      if (!show || now - last < (tty ? 500 : 1000)) return;
      last = now;
      process.stderr.write(tty ? `\r${line(now)}   ` : `${line(now)}\n`);
    },
    end() {
      if (!show) return;
      const now = Date.now();
      process.stderr.write(`${tty ? '\r' : ''}${line(now)}, done in ${((now - started) / 1000).toFixed(1)}s${tty ? '   ' : ''}\n`);
    },
  };
  return m;
}

/** An image's header read from its first bytes as they pass (undefined when they are not a valid header). */
export class HeaderTap {
  header: ImageHeader | undefined;
  private prefix: Buffer[] = [];
  private have = 0;

  see(c: Buffer): void {
    if (this.have >= HEADER_LENGTH) return;
    const part = Buffer.from(c.subarray(0, HEADER_LENGTH - this.have)); // a copy: sources reuse buffers
    this.prefix.push(part);
    this.have += part.length;
    if (this.have < HEADER_LENGTH) return;
    const b = Buffer.concat(this.prefix);
    this.prefix = [];
    if (!b.subarray(0, MAGIC.length).equals(MAGIC)) return;
    try {
      this.header = decodeHeader(b);
    } catch {
      // a damaged header: the reader that consumes the stream reports it
    }
  }
}

/**
 * Pass chunks on one at a time (each before the next is asked for, so the source may reuse buffers),
 * counting them; without a known total, the image's own header gives it.
 */
export async function* counted(src: AsyncIterable<Uint8Array>, m: Meter, tap = new HeaderTap()): AsyncGenerator<Buffer> {
  for await (const c of src) {
    const b = Buffer.isBuffer(c) ? c : Buffer.from(c.buffer, c.byteOffset, c.byteLength);
    tap.see(b);
    if (m.total === undefined && tap.header) m.total = tap.header.totalLength;
    m.add(b.length);
    yield b;
  }
  m.end();
}

/**
 * Write every chunk to the file `out` (image/fileSink.ts: O_DIRECT where allowed, made durable before this
 * resolves) or to stdout, each copied or written before the next is asked for (so the source may reuse
 * buffers).
 */
export async function writeEach(src: AsyncIterable<Buffer>, out: string | undefined): Promise<void> {
  // A backup reported done must survive a power cut, as a file on disk, not only in the page cache.
  if (out !== undefined) {
    await writeFileDurably(out, src);
    return;
  }
  const stdout = process.stdout;
  for await (const c of src) {
    await new Promise<void>((resolve, reject) => {
      stdout.write(c, (err) => (err ? reject(err) : resolve()));
    });
  }
}
