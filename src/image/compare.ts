// `verify IMAGE --against DISK@SNAP`: does an image hold what the snapshot it names holds? A full image must
// give every block of the snapshot (its slots equal the snapshot's blocks; every other block of the
// snapshot reads as zeros); a delta must give the change from its base to the snapshot (its slots equal the
// snapshot's blocks, its zero list reads as zeros there, and every other block that may have changed
// reads the same in base and snapshot). The image is parsed and verified as a restore would (reader.ts)
// while it is compared; the first difference is reported with its block and byte offset.
// The snapshot side is an interface, so the comparison runs the same on a store opened directly
// (SnapshotSide over the disk layer's views, below) and through a mount (the CLI reads its files).

import type { Registry } from '../disk/registry.js';
import type { View } from '../disk/view.js';
import { parseImage, type ImageReport } from './reader.js';
import type { ImageSource } from './byteSource.js';
import type { ImageHeader } from './header.js';
import { invalid, notFound } from '../errors.js';
import { isZero } from '../util/zero.js';

/** The store side of a comparison: the target snapshot, and for a delta its base (found by id). */
export interface SnapshotSide {
  /** The target snapshot's size, block size and id. */
  target: { size: number; blockSize: number; uid: string; name: string };
  /** Read the target (or, with base true, the base) at pos into dst: bytes read. */
  read(dst: Buffer, pos: number, base?: boolean): Promise<number>;
  /** The target's data blocks (full images: every other block must read as zeros). */
  dataBlocks(): Promise<Iterable<number>>;
  /** Blocks that may differ between the base with this id and the target (deltas); NOT_FOUND if no such base. */
  changedSince(baseUid: string): Promise<Iterable<number>>;
}

export interface Comparison {
  report: ImageReport;
  /** Blocks compared. */
  blocks: number;
  /** The first difference, or undefined: the image holds exactly what it should. */
  difference?: { lbn: number; offset: number; why: string };
  /** The image names another snapshot id than the target's (its content may still match). */
  otherId?: string;
}

export async function compareImage(source: ImageSource, side: SnapshotSide): Promise<Comparison> {
  const t = side.target;
  let header!: ImageHeader;
  let difference: Comparison['difference'];
  let blocks = 0;
  const inImage = new Set<number>();
  const mine = Buffer.alloc(t.blockSize);
  const other = Buffer.alloc(t.blockSize);
  const differ = (lbn: number, why: string): void => {
    difference ??= { lbn, offset: lbn * t.blockSize, why };
  };
  /** Block lbn of the target (or base) into buf, zero-filled past the end. */
  const blockOf = async (lbn: number, buf: Buffer, base = false): Promise<Buffer> => {
    buf.fill(0);
    await side.read(buf, lbn * t.blockSize, base);
    return buf;
  };
  const report = await parseImage(source, {
    header: (h) => {
      header = h;
      if (h.blockSize !== t.blockSize) throw invalid(`image block size ${h.blockSize} differs from ${t.name}'s ${t.blockSize}`);
      if (h.virtualSize !== t.size) differ(0, `image is of a ${h.virtualSize}-byte disk, ${t.name} is ${t.size} bytes`);
    },
    block: async (lbn, data) => {
      blocks++;
      inImage.add(lbn);
      if (difference) return;
      if (!data.equals(await blockOf(lbn, mine))) differ(lbn, `block ${lbn} of the image differs from ${t.name}`);
    },
    zero: async (lbn) => {
      inImage.add(lbn);
      if (difference) return;
      if (!isZero(await blockOf(lbn, mine))) differ(lbn, `the image makes block ${lbn} a hole, ${t.name} has data there`);
    },
  });
  if (!difference) {
    const blocksOfSize = Math.ceil(t.size / t.blockSize);
    if (header.kind === 'full') {
      for (const lbn of await side.dataBlocks()) {
        if (inImage.has(lbn) || lbn >= blocksOfSize) continue;
        if (!isZero(await blockOf(lbn, mine))) {
          differ(lbn, `block ${lbn} of ${t.name} holds data the image does not have`);
          break;
        }
      }
    } else {
      for (const lbn of await side.changedSince(header.baseSnapId!)) {
        if (inImage.has(lbn) || lbn >= blocksOfSize) continue;
        if (!(await blockOf(lbn, mine)).equals(await blockOf(lbn, other, true))) {
          differ(lbn, `block ${lbn} changed from base ${header.baseSnapName ?? header.baseSnapId} to ${t.name}, the image does not have it`);
          break;
        }
      }
    }
  }
  return { report, blocks, ...(difference ? { difference } : {}), ...(header.snapId !== t.uid ? { otherId: header.snapId } : {}) };
}

/** The snapshot side over a store opened directly (the disk layer's views). */
export function storeSide(reg: Registry, disk: string, snap: string): SnapshotSide {
  const view = reg.snapshotView(disk, snap);
  const s = view.snapshot()!;
  const baseOf = (uid: string): View => {
    const b = reg.diskView(disk).snapshots().find((v) => v.snapshot()!.uid === uid);
    if (!b) throw notFound(`base snapshot ${uid} of the image in disk ${disk} (deleted, or the image is of another disk)`);
    if (b.index()! >= view.index()!) throw invalid(`base snapshot ${b.name} is not older than ${view.name}`);
    return b;
  };
  let base: View | undefined;
  return {
    target: { size: s.size, blockSize: view.blockSize, uid: s.uid, name: view.name },
    read: async (dst, pos, fromBase) => (fromBase ? base! : view).read(dst, pos),
    dataBlocks: async () => (await view.blocks()).lbns,
    changedSince: async (uid) => {
      base = baseOf(uid);
      return view.changesSince(base);
    },
  };
}
