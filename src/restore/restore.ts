/**
 * Restoring an image (restore method 1: a new disk of the original geometry; method 2: back into an
 * existing disk, each block to its original logical address). Blocks are staged into fresh physical blocks
 * as the image streams in; nothing is visible until the whole image has been verified (the parser's end
 * event), and then one batch makes it the disk's content. Any failure — a damaged, truncated or foreign
 * image, a full pool, a delta whose base the disk does not hold — frees the staged blocks and changes nothing.
 */
import type { Registry } from '../disk/registry.js';
import type { Disk } from '../disk/view.js';
import type { IntoPlan, Landing } from '../disk/landing.js';
import { parseImage, type ImageSource } from '../image/index.js';
import type { ImageHeader } from '../image/header.js';
import { describeImage } from '../image/snapshotImage.js';
import { busy, errorCode, errorMessage, exists, invalid, VdiskError } from '../errors.js';
import { checkName } from '../disk/names.js';
import { SECTOR } from '../disk/sums.js';
import { checkBlockSize, checkVirtualSize } from '../util/size.js';

/**
 * Where an image goes: a new disk (method 1), or into an existing one (method 2) with the apply options:
 * `force` rolls the disk back to the delta's base snapshot first when it changed since (like
 * `zfs recv -F`: what was written since and the newer snapshots are discarded); `resize` lets a full image
 * of another size change the disk's size (never silently); `create` restores a full image as a new disk
 * when the disk does not exist (one command for the first and every later image, like `zfs recv`).
 */
export type RestoreTarget = { mode: 'new'; name: string } | { mode: 'into'; name: string; force?: boolean; resize?: boolean; create?: boolean };

export interface RestoreResult {
  disk: string;
  /** 'new' when the disk was created (restore --as, or --into --create of a missing disk). */
  mode: 'new' | 'into';
  kind: 'full' | 'delta';
  blocks: number;
  zeros: number;
  snapId: string;
  /** The image's identity in words (disk, snapshot, id; a delta's base). */
  image: string;
  /** The snapshot the disk has afterwards under the source's name and uid. */
  snapshot: string;
  /** The snapshot the disk was rolled back to first (force). */
  rolledBackTo?: string;
}

function checkTarget(reg: Registry, target: RestoreTarget): void {
  if (target.mode === 'new') {
    checkName(target.name);
    if (reg.has(target.name)) throw exists(`disk ${target.name}`);
  } else if (reg.diskView(target.name).isOpen()) throw busy(`disk ${target.name} is open`);
}

/** Validate the header against the target before any block is staged. */
async function checkHeader(reg: Registry, target: RestoreTarget, h: ImageHeader): Promise<void> {
  checkBlockSize(h.blockSize);
  checkVirtualSize(h.virtualSize, h.blockSize);
  checkName(h.snapName, 'snapshot'); // recorded on the target under this name
  if (target.mode === 'new') {
    if (h.kind === 'delta') {
      throw invalid(`image is incremental (${h.baseSnapName}..${h.snapName}); apply it with --into a disk that holds ${h.baseSnapName} (${h.baseSnapId})`);
    }
    return;
  }
  await applyPlan(reg.diskView(target.name), h, target);
}

/**
 * The apply rules (like `zfs recv`), checked before any block is staged and again when the image commits:
 * - same block size; the image's snapshot name is free on the disk, or names this very snapshot (same uid:
 *   a full image of it may be put back; a delta creating it was applied already and is refused);
 * - a full image replaces the content; a different size needs `resize`; with `create` (the disk was
 *   there already) also `force`, as `zfs recv` of a full stream onto an existing file system needs -F;
 * - a delta applies onto a disk that holds its base (restored, rolled back to it, or its latest snapshot
 *   with nothing changed since: disk/identity.ts); with `force`, onto a disk that has the base snapshot,
 *   rolled back to it first (IntoPlan); otherwise it is refused with the reason and nothing changes.
 */
async function applyPlan(d: Disk, h: ImageHeader, t: RestoreTarget & { mode: 'into' }): Promise<IntoPlan> {
  if (d.blockSize !== h.blockSize) throw invalid(`image block size ${h.blockSize} differs from disk ${d.name}'s ${d.blockSize}`);
  const snaps = d.snapshots().map((v) => v.snapshot()!);
  const same = snaps.find((s) => s.name === h.snapName);
  if (same && same.uid !== h.snapId) {
    throw exists(`disk ${d.name} already has a snapshot ${h.snapName} (${same.uid}) that is not the image's (${h.snapId}): delete it first, or restore --as a new disk`);
  }
  if (h.kind === 'full') {
    if (t.create && !t.force) {
      throw new VdiskError('EXISTS', `disk ${d.name} exists already and a full image would replace its content: add --force to overwrite it, or send a delta`);
    }
    if (h.virtualSize !== d.size() && !t.resize) {
      throw invalid(`image of ${h.diskName}@${h.snapName} is ${h.virtualSize} bytes and disk ${d.name} is ${d.size()}: add --resize to give the disk the image's size`);
    }
    return {};
  }
  if (same) throw exists(`disk ${d.name} already has snapshot ${h.snapName} (${h.snapId}): this incremental image was applied already`);
  const holds = await d.holds();
  if (holds.includes(h.baseSnapId!)) return {};
  const k = snaps.findIndex((s) => s.uid === h.baseSnapId);
  if (k < 0) {
    const why = holds.length ? ` (it holds snapshot ${holds.join(' = ')})` : '';
    throw invalid(`disk ${d.name} does not have base snapshot ${h.diskName}@${h.baseSnapName} (${h.baseSnapId}) of this incremental image${why}; restore a full image of ${h.baseSnapName} into it first`);
  }
  if (t.force) return { rollbackTo: h.baseSnapId! };
  const newer = snaps.slice(k + 1).map((s) => s.name);
  throw invalid(`disk ${d.name} changed since its snapshot ${snaps[k]!.name}, the base of this incremental image (${h.baseSnapId}): add --force to roll it back to ${snaps[k]!.name} first, discarding what was written since${newer.length ? ` and deleting the newer snapshots ${newer.join(', ')}` : ''}`);
}

/** The target as it applies now: --into --create of a disk that does not exist restores it as new. */
function effective(reg: Registry, t: RestoreTarget): RestoreTarget {
  return t.mode === 'into' && t.create && !reg.has(t.name) ? { mode: 'new', name: t.name } : t;
}

export async function restoreImage(reg: Registry, source: ImageSource, asked: RestoreTarget): Promise<RestoreResult> {
  const target = effective(reg, asked);
  checkTarget(reg, target);
  let header: ImageHeader | undefined;
  let landing: Landing | undefined;
  const zeros: number[] = [];
  try {
    await parseImage(source, {
      header: async (h) => {
        await checkHeader(reg, target, h);
        header = h;
        landing = await reg.landing(h.blockSize);
      },
      block: (lbn, data, _slot, crcs) => landing!.put(lbn, data, crcs),
      zero: (lbn) => {
        zeros.push(lbn);
      },
    }, { pieceCrcs: SECTOR }); // the parser's CRCs of the sectors are the landed blocks' checksums
    const h = header!;
    const l = landing!;
    await l.settle();
    if (h.version !== 1) l.sortByLbn(); // the commit takes the blocks in lbn order, as v1 gives them
    const content = { size: h.virtualSize, snapshot: { name: h.snapName, uid: h.snapId, created: h.snapCreated } };
    let plan: IntoPlan = {};
    await reg.serialized(async () => {
      checkTarget(reg, target); // the world may have changed while the image streamed in
      if (target.mode === 'new') await l.asNewDisk(target.name, content);
      else await l.into(target.name, { ...content, full: h.kind === 'full', zeros }, async (d) => (plan = await applyPlan(d, h, target)));
    });
    const rolledBackTo = plan.rollbackTo !== undefined ? reg.diskView(target.name).snapshots().find((v) => v.snapshot()?.uid === plan.rollbackTo)?.snapshot()?.name : undefined;
    return {
      disk: target.name,
      mode: target.mode,
      kind: h.kind,
      blocks: l.lbns.length,
      zeros: zeros.length,
      snapId: h.snapId,
      image: describeImage(h),
      snapshot: h.snapName,
      ...(rolledBackTo !== undefined ? { rolledBackTo } : {}),
    };
  } finally {
    await landing?.release();
  }
}

/** A restore's result in words, the same offline and through the mount. */
export function describeRestore(r: RestoreResult): string {
  const back = r.rolledBackTo !== undefined ? ` (rolled back to ${r.rolledBackTo} first)` : '';
  return `${r.kind} image of snapshot ${r.snapId} ${r.mode === 'new' ? 'as' : 'into'} ${r.disk}${back}: ${r.blocks} blocks, ${r.zeros} holes, now ${r.disk}@${r.snapshot}`;
}

/**
 * restoreImage, with one line in the store's history (`restore into r` / `restore as r`, the image restored
 * or the reason it was refused). Through the mount, `dd` and the shell see only the errno; the history
 * keeps the words for them, and a client that reads the restore file back gets its own reply.
 */
export async function restoreRecorded(reg: Registry, source: ImageSource, asked: RestoreTarget): Promise<RestoreResult> {
  const target = effective(reg, asked);
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
