// verifyImage (full verification without restoring) and inspectImage (header + tables in a
// readable form for the CLI `inspect` command). inspectImage reads only header and tables by
// default (cheap even for huge images); pass { verify: true } to also verify data and trailer.

import type { ImageSource } from './byteSource.js';
import type { ImageHeader } from './header.js';
import { corrupt } from './imageError.js';
import { readImage, type ImageReport, type ImageTables } from './reader.js';

/** Read and verify a whole image without restoring it; rejects with ImageError CORRUPT. */
export async function verifyImage(source: ImageSource): Promise<ImageReport> {
  for await (const ev of readImage(source)) {
    if (ev.type === 'end') return ev.report;
  }
  throw corrupt('eof', 'image ended without a verified trailer');
}

export interface SlotEntry { slot: number; lbn: number; pbn: number }

export interface ImageInspection {
  header: ImageHeader;
  /** One row per data slot: logical block -> slot -> source physical block. */
  slots: SlotEntry[];
  /** Logical blocks that became holes (delta images). */
  zeros: number[];
  /** Present when inspected with { verify: true }. */
  report?: ImageReport;
}

export async function inspectImage(source: ImageSource, opts: { verify?: boolean } = {}): Promise<ImageInspection> {
  let header: ImageHeader | undefined;
  let tables: ImageTables | undefined;
  for await (const ev of readImage(source)) {
    if (ev.type === 'header') header = ev.header;
    else if (ev.type === 'tables') {
      tables = ev.tables;
      if (!opts.verify) break;
    } else if (ev.type === 'end') {
      return { ...toInspection(header!, tables!), report: ev.report };
    }
  }
  if (!header || !tables || opts.verify) throw corrupt('eof', 'image ended early');
  return toInspection(header, tables);
}

function toInspection(header: ImageHeader, t: ImageTables): ImageInspection {
  const slots: SlotEntry[] = [];
  for (let i = 0; i < t.lbns.length; i++) slots.push({ slot: i, lbn: t.lbns[i]!, pbn: t.pbns[i]! });
  return { header, slots, zeros: Array.from(t.zeros) };
}

/** Collapse ascending numbers into "a-b" runs: [1,2,3,7] -> "1-3,7". */
export function formatRuns(values: ArrayLike<number>): string {
  const out: string[] = [];
  for (let i = 0; i < values.length;) {
    let j = i;
    while (j + 1 < values.length && values[j + 1]! === values[j]! + 1) j++;
    out.push(i === j ? `${values[i]}` : `${values[i]}-${values[j]}`);
    i = j + 1;
  }
  return out.join(',');
}

/** Plain-text rendering for `vdiskfs inspect`; at most maxRows slot rows (default all). */
export function formatInspection(ins: ImageInspection, maxRows = Infinity): string {
  const h = ins.header;
  const lines = [
    `image kind:        ${h.kind} (format v${h.version}, header ${h.headerLength} bytes)`,
    `disk:              ${h.diskName}`,
    `snapshot:          ${h.snapName} (id ${h.snapId}, created ${new Date(h.snapCreated).toISOString()})`,
  ];
  if (h.kind === 'delta') lines.push(`base snapshot:     ${h.baseSnapName ?? ''} (id ${h.baseSnapId ?? ''})`);
  lines.push(
    `virtual size:      ${h.virtualSize} bytes (${h.blockCount} blocks of ${h.blockSize})`,
    `data blocks:       ${h.slotCount} (source allocated ${h.sourceAllocated})`,
    `zero blocks:       ${h.zeroCount}`,
    `checksum groups:   ${h.groupCount} x ${h.groupBlocks} blocks`,
    `data offset:       ${h.dataOffset}`,
    `image length:      ${h.totalLength}`,
    `header/tables crc: ${hex(h.headerCrc)} / ${hex(h.tablesCrc)}`,
  );
  if (ins.report) lines.push('verified:          yes (all checksums and trailer OK)');
  lines.push('', 'slot        lbn         source-pbn');
  const n = Math.min(ins.slots.length, maxRows);
  for (let i = 0; i < n; i++) {
    const s = ins.slots[i]!;
    lines.push(`${String(s.slot).padEnd(12)}${String(s.lbn).padEnd(12)}${s.pbn}`);
  }
  if (n < ins.slots.length) lines.push(`... ${ins.slots.length - n} more slots`);
  lines.push('', `data lbns: ${formatRuns(ins.slots.map((s) => s.lbn)) || '(none)'}`);
  if (h.kind === 'delta') lines.push(`zero lbns: ${formatRuns(ins.zeros) || '(none)'}`);
  return lines.join('\n') + '\n';
}

const hex = (n: number): string => `0x${n.toString(16).padStart(8, '0')}`;
