/**
 * Restoring an image (restore method 1: a new disk of the original geometry; method 2: back into an
 * existing disk, each block to its original logical address). Blocks are staged into fresh physical blocks
 * as the image streams in; nothing is visible until the whole image has been verified (the parser's end
 * event), and then one batch makes it the disk's content. Any failure — a damaged, truncated or foreign
 * image, a full pool, a delta whose base the disk does not hold — frees the staged blocks and changes nothing.
 */
import type { Registry } from '../disk/registry.js';
import type { Disk } from '../disk/view.js';
import type { Landing } from '../disk/landing.js';
import { parseImage, type ImageSource } from '../image/index.js';
import type { ImageHeader } from '../image/header.js';
import { describeImage } from '../image/snapshotImage.js';
import { busy, errorCode, errorMessage, exists, invalid } from '../errors.js';
import { checkName } from '../disk/names.js';
import { checkBlockSize, checkVirtualSize } from '../util/size.js';

export type RestoreTarget = { mode: 'new'; name: string } | { mode: 'into'; name: string };

export interface RestoreResult {
  disk: string;
  kind: 'full' | 'delta';
  blocks: number;
  zeros: number;
  snapId: string;
  /** The image's identity in words (disk, snapshot, id; a delta's base). */
  image: string;
}

function checkTarget(reg: Registry, target: RestoreTarget): void {
  if (target.mode === 'new') {
    checkName(target.name);
    if (reg.has(target.name)) throw exists(`disk ${target.name}`);
  } else if (reg.diskView(target.name).isOpen()) throw busy(`disk ${target.name} is open`);
}

/** Validate the header against the target before any block is staged. */
function checkHeader(reg: Registry, target: RestoreTarget, h: ImageHeader): void {
  checkBlockSize(h.blockSize);
  checkVirtualSize(h.virtualSize, h.blockSize);
  if (target.mode === 'new') {
    if (h.kind === 'delta') {
      throw invalid(`image is incremental (${h.baseSnapName}..${h.snapName}); apply it with --into a disk that holds ${h.baseSnapName} (${h.baseSnapId})`);
    }
    return;
  }
  checkInto(reg.diskView(target.name), h);
}

/**
 * The image fits the disk: same block size, and an incremental image applies only onto a disk that provably
 * holds its base (disk/identity.ts).
 */
function checkInto(d: Disk, h: ImageHeader): void {
  if (d.blockSize !== h.blockSize) throw invalid(`image block size ${h.blockSize} differs from disk ${d.name}'s ${d.blockSize}`);
  if (h.kind !== 'delta') return;
  const holds = d.holds();
  if (holds === h.baseSnapId) return;
  const why = holds ? `it holds snapshot ${holds}` : 'it was changed since its last restore (a write, discard, resize, rollback or failed restore), or never restored';
  throw invalid(`disk ${d.name} does not hold base snapshot ${h.diskName}@${h.baseSnapName} (${h.baseSnapId}) of this incremental image: ${why}; restore a full image of ${h.baseSnapName} into it first`);
}

export async function restoreImage(reg: Registry, source: ImageSource, target: RestoreTarget): Promise<RestoreResult> {
  checkTarget(reg, target);
  let header: ImageHeader | undefined;
  let landing: Landing | undefined;
  const zeros: number[] = [];
  try {
    await parseImage(source, {
      header: async (h) => {
        checkHeader(reg, target, h);
        header = h;
        landing = await reg.landing(h.blockSize);
      },
      block: (lbn, data) => landing!.put(lbn, data),
      zero: (lbn) => {
        zeros.push(lbn);
      },
    });
    const h = header!;
    const l = landing!;
    await l.settle();
    if (h.version !== 1) l.sortByLbn(); // the commit takes the blocks in lbn order, as v1 gives them
    const content = { size: h.virtualSize, claim: h.snapId };
    await reg.serialized(async () => {
      checkTarget(reg, target); // the world may have changed while the image streamed in
      if (target.mode === 'new') await l.asNewDisk(target.name, content);
      else await l.into(target.name, { ...content, full: h.kind === 'full', zeros }, (d) => checkInto(d, h));
    });
    return { disk: target.name, kind: h.kind, blocks: l.lbns.length, zeros: zeros.length, snapId: h.snapId, image: describeImage(h) };
  } finally {
    await landing?.release();
  }
}

/** A restore's result in words, the same offline and through the mount. */
export function describeRestore(r: RestoreResult, target: RestoreTarget): string {
  return `${r.kind} image of snapshot ${r.snapId} ${target.mode === 'new' ? 'as' : 'into'} ${r.disk}: ${r.blocks} blocks, ${r.zeros} holes`;
}

/**
 * restoreImage, with one line in the store's history (`restore into r` / `restore as r`, the image restored
 * or the reason it was refused). Through the mount, `dd` and the shell see only the errno; the history
 * keeps the words for them, and a client that reads the restore file back gets its own reply.
 */
export async function restoreRecorded(reg: Registry, source: ImageSource, target: RestoreTarget): Promise<RestoreResult> {
  const command = `restore ${target.mode === 'new' ? 'as' : 'into'} ${target.name}`;
  try {
    const r = await restoreImage(reg, source, target);
    await reg.recordHistory(command, 'ok', `${r.image}: ${r.blocks} blocks, ${r.zeros} holes`);
    return r;
  } catch (e) {
    await reg.recordHistory(command, 'error', errorMessage(e).replace(/[\x00-\x1f\x7f]/g, '?'), errorCode(e)).catch(() => undefined);
    throw e;
  }
}
