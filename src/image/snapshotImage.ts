/**
 * Images of snapshots: plan a full image (every data block of the snapshot's view) or a delta (the blocks
 * that differ between an older base snapshot and the target, plus the blocks that became holes), and
 * serve it through an ImageProducer that reads the snapshot's physical blocks. Snapshot views never change
 * and their physical blocks stay put while the snapshot exists, so plans are cached per disk by snapshot id; the
 * caller keeps the snapshot open (snapOpen) while a producer is in use, which blocks its deletion.
 */
import type { Registry } from '../disk/registry.js';
import type { View } from '../disk/view.js';
import { pbnRuns, planImage, type ImagePlan } from './layout.js';
import { ImageProducer } from './writer.js';
import { invalid, notFound } from '../errors.js';
import type { DataEntry } from '../meta/keys.js';
import { crc32 } from '../util/crc32.js';

/** The snapshot an image holds, and for a delta the older snapshot of the same disk it applies onto. */
export interface ImageTarget {
  view: View;
  base?: View;
}

/** Per disk of an open store (its DiskState), by snapshot ids. */
const planCaches = new WeakMap<object, Map<string, ImagePlan>>();
/** Each plan's blocks by pbn: lbn and entry (its checksums), for verifying what the producer reads. */
const planBlocks = new WeakMap<ImagePlan, Map<number, { lbn: number; entry: DataEntry }>>();
const CACHE_LIMIT = 16;

export function findTarget(reg: Registry, diskName: string, snapName: string, baseName?: string): ImageTarget {
  const view = reg.snapshotView(diskName, snapName);
  if (baseName === undefined) return { view };
  if (!reg.diskView(diskName).snapshotNames().includes(baseName)) throw notFound(`base snapshot ${diskName}@${baseName}`);
  const base = reg.snapshotView(diskName, baseName);
  if (base.index()! >= view.index()!) throw invalid(`base snapshot ${baseName} must be older than ${snapName}`);
  return { view, base };
}

/** The snapshots' records; NOT_FOUND when one was deleted since the target was found. */
function records(t: ImageTarget) {
  const snap = t.view.snapshot();
  const base = t.base?.snapshot();
  if (!snap || (t.base && !base)) throw notFound(`snapshot of ${t.view.state.rec.name} (deleted)`);
  return { snap, base };
}

export async function planFor(t: ImageTarget): Promise<ImagePlan> {
  const { snap, base } = records(t);
  // By disk and snapshot ids, not uids: a received snapshot has its source's uid, which another disk of the
  // store may have too.
  let planCache = planCaches.get(t.view.state);
  if (!planCache) planCaches.set(t.view.state, (planCache = new Map()));
  const key = `${snap.id}/${base?.id ?? ''}`;
  const hit = planCache.get(key);
  if (hit) return hit;
  const bs = t.view.blockSize;
  let dataLbns: number[];
  let sourcePbns: number[];
  const zeroLbns: number[] = [];
  const blocks = new Map<number, { lbn: number; entry: DataEntry }>();
  if (!base || !t.base) {
    const v = await t.view.blocks();
    dataLbns = v.lbns;
    sourcePbns = v.pbns;
    v.entries.forEach((entry, i) => blocks.set(entry.pbn, { lbn: v.lbns[i]!, entry }));
  } else {
    dataLbns = [];
    sourcePbns = [];
    const candidates = (await t.view.changesSince(t.base)).filter((lbn) => lbn * bs < snap.size || lbn * bs < base.size);
    for (const lbn of candidates) {
      const inTarget = lbn * bs < snap.size ? await t.view.resolve(lbn) : { kind: 'zero' as const };
      const inBase = lbn * bs < base.size ? await t.base.resolve(lbn) : { kind: 'zero' as const };
      if (inTarget.kind === 'data') {
        if (inBase.kind === 'data' && inBase.pbn === inTarget.pbn) continue;
        dataLbns.push(lbn);
        sourcePbns.push(inTarget.pbn);
        blocks.set(inTarget.pbn, { lbn, entry: inTarget.entry });
      } else if (inBase.kind === 'data' && lbn * bs < snap.size) zeroLbns.push(lbn);
    }
  }
  const plan = planImage({
    kind: base ? 'delta' : 'full',
    virtualSize: snap.size,
    blockSize: bs,
    dataLbns,
    sourcePbns,
    zeroLbns,
    sourceAllocated: dataLbns.length,
    diskName: t.view.state.rec.name,
    snapName: snap.name,
    snapId: snap.uid,
    snapCreated: snap.created,
    ...(base ? { baseSnapId: base.uid, baseSnapName: base.name } : {}),
  });
  planCache.set(key, plan);
  planBlocks.set(plan, blocks);
  if (planCache.size > CACHE_LIMIT) planCache.delete(planCache.keys().next().value!);
  return plan;
}

/** An image's identity in words, for the history: `full image of d@s (uid)`, `delta image of d@b..s (uid on base uid)`. */
export function describeImage(h: { kind: 'full' | 'delta'; diskName: string; snapName: string; snapId: string; baseSnapName?: string; baseSnapId?: string }): string {
  if (h.kind === 'full') return `full image of ${h.diskName}@${h.snapName} (${h.snapId})`;
  return `delta image of ${h.diskName}@${h.baseSnapName ?? '?'}..${h.snapName} (${h.snapId} on base ${h.baseSnapId})`;
}

/**
 * A producer of the image bytes. Slots are read by physical number straight from the pool: each piece of
 * the image in runs of physically consecutive blocks (pbnRuns), one request per run, all of a piece's runs
 * at once. Version 2 images hold their slots in physical order, so a sequential copy reads the pool
 * sequentially, in requests as large as a piece (2 MiB) wherever the snapshot's blocks are adjacent.
 */
export async function producerFor(t: ImageTarget): Promise<ImageProducer> {
  const plan = await planFor(t);
  const bs = t.view.blockSize;
  const reader = await t.view.blockReader();
  const blocks = planBlocks.get(plan);
  return new ImageProducer(plan, {
    readSlots: async (first, count, dst) => {
      await Promise.all(pbnRuns(plan.pbns, first, first + count).map(([s, n]) =>
        reader.readRun(plan.pbns[s]!, n, dst.subarray((s - first) * bs, (s - first + n) * bs))));
      // A damaged block fails the image (CORRUPT: EIO to a reader of the copy file), never goes into it. The
      // check computes each block's CRC-32, from which the producer combines its checksum groups' CRCs.
      const crcs = new Uint32Array(count);
      for (let s = first; s < first + count; s++) {
        const b = blocks?.get(plan.pbns[s]!);
        const block = dst.subarray((s - first) * bs, (s - first + 1) * bs);
        crcs[s - first] = b ? t.view.verifyBlock(b.entry, b.lbn, block) : crc32(block);
      }
      return crcs;
    },
    ...(reader.alloc ? { alloc: reader.alloc } : {}),
  });
}
