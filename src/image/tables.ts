// Rendering of the table area [headerLength, dataOffset) of a plan for any byte sub-range, without
// keeping the encoded tables in memory: entries are encoded on demand from the plan's typed arrays.
// Invariants: renderTables(plan, a, b) is byte-identical to the same range of one full rendering;
// padding between tablesEnd and dataOffset is zero; tablesCrc covers the whole area incl. padding.

import { Crc32 } from '../util/crc32.js';
import { writeU64 } from './header.js';
import type { ImagePlan } from './layout.js';

/** Write table bytes for absolute image range [from, to) into out at outOff. */
export function renderTables(plan: ImagePlan, from: number, to: number, out: Buffer, outOff: number): void {
  const parts: Array<[number, Float64Array]> = [
    [plan.lbnTableOffset, plan.lbns], [plan.pbnTableOffset, plan.pbns], [plan.zeroTableOffset, plan.zeros],
  ];
  const tmp = Buffer.allocUnsafe(8);
  for (const [start, arr] of parts) {
    const end = start + 8 * arr.length;
    const a = Math.max(from, start);
    const b = Math.min(to, end);
    if (a >= b) continue;
    let pos = a;
    while (pos < b) {
      const idx = Math.floor((pos - start) / 8);
      const entryStart = start + idx * 8;
      const dst = outOff + (pos - from);
      if (pos === entryStart && pos + 8 <= b) {
        writeU64(out, dst, arr[idx]!);
        pos += 8;
      } else {
        writeU64(tmp, 0, arr[idx]!);
        const n = Math.min(b, entryStart + 8) - pos;
        tmp.copy(out, dst, pos - entryStart, pos - entryStart + n);
        pos += n;
      }
    }
  }
  const padA = Math.max(from, plan.tablesEnd);
  const padB = Math.min(to, plan.dataOffset);
  if (padA < padB) out.fill(0, outOff + (padA - from), outOff + (padB - from));
}

/** CRC-32 over the table area [headerLength, dataOffset), rendered in 64 KiB pieces. */
export function tablesCrcOf(plan: ImagePlan): number {
  const crc = new Crc32();
  const piece = Buffer.allocUnsafe(65536);
  for (let pos = plan.lbnTableOffset; pos < plan.dataOffset; pos += piece.length) {
    const end = Math.min(plan.dataOffset, pos + piece.length);
    renderTables(plan, pos, end, piece, 0);
    crc.update(piece, 0, end - pos);
  }
  return crc.digest();
}
