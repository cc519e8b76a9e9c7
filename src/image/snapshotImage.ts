/**
 * Images of snapshots: plan a full image (every data block of the snapshot's view) or a delta (the blocks
 * that differ between an older base snapshot and the target, plus the blocks that became holes), and
 * serve it through an ImageProducer that reads the snapshot's physical blocks. Snapshot views never change
 * and their physical blocks stay put while the snapshot exists, so plans are cached by snapshot id; the
 * caller keeps the snapshot open (snapOpen) while a producer is in use, which blocks its deletion.
 */
import type { Context, DiskState } from '../disk/context.js';
import { collectView } from '../disk/viewScan.js';
import { changedSince } from '../disk/snapshots.js';
import { resolve } from '../disk/resolve.js';
import { planImage, type ImagePlan } from './layout.js';
import { ImageProducer } from './writer.js';
import { invalid, notFound } from '../errors.js';

export interface ImageTarget {
  disk: DiskState;
  snapIndex: number;
  baseIndex?: number;
}

const planCache = new Map<string, ImagePlan>();
const CACHE_LIMIT = 16;

export function findTarget(ctx: Context, diskName: string, snapName: string, baseName?: string): ImageTarget {
  const disk = ctx.disk(diskName);
  const snapIndex = disk.snapIndex(snapName);
  if (baseName === undefined) return { disk, snapIndex };
  const baseIndex = disk.rec.snapshots.findIndex((s) => s.name === baseName);
  if (baseIndex < 0) throw notFound(`base snapshot ${diskName}@${baseName}`);
  if (baseIndex >= snapIndex) throw invalid(`base snapshot ${baseName} must be older than ${snapName}`);
  return { disk, snapIndex, baseIndex };
}

export async function planFor(ctx: Context, t: ImageTarget): Promise<ImagePlan> {
  const snap = t.disk.rec.snapshots[t.snapIndex]!;
  const base = t.baseIndex !== undefined ? t.disk.rec.snapshots[t.baseIndex] : undefined;
  const key = `${snap.uid}/${base?.uid ?? ''}`;
  const hit = planCache.get(key);
  if (hit) return hit;
  const bs = t.disk.blockSize;
  let dataLbns: number[];
  let sourcePbns: number[];
  const zeroLbns: number[] = [];
  if (!base) {
    const v = await collectView(ctx, t.disk, t.snapIndex);
    dataLbns = v.lbns;
    sourcePbns = v.pbns;
  } else {
    dataLbns = [];
    sourcePbns = [];
    await ctx.drain();
    const candidates = (await changedSince(t.disk, t.baseIndex!)).filter((lbn) => lbn * bs < snap.size || lbn * bs < base.size);
    for (const lbn of candidates) {
      const release = await t.disk.lock.acquire(lbn);
      try {
        const inTarget = lbn * bs < snap.size ? await resolve(ctx, t.disk, t.snapIndex, lbn) : { kind: 'zero' as const };
        const inBase = lbn * bs < base.size ? await resolve(ctx, t.disk, t.baseIndex!, lbn) : { kind: 'zero' as const };
        if (inTarget.kind === 'data') {
          if (inBase.kind === 'data' && inBase.pbn === inTarget.pbn) continue;
          dataLbns.push(lbn);
          sourcePbns.push(inTarget.pbn);
        } else if (inBase.kind === 'data' && lbn * bs < snap.size) zeroLbns.push(lbn);
      } finally {
        release();
      }
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
    diskName: t.disk.rec.name,
    snapName: snap.name,
    snapId: snap.uid,
    snapCreated: snap.created,
    ...(base ? { baseSnapId: base.uid, baseSnapName: base.name } : {}),
  });
  planCache.set(key, plan);
  if (planCache.size > CACHE_LIMIT) planCache.delete(planCache.keys().next().value!);
  return plan;
}

/** A producer of the image bytes. Blocks are read by physical number straight from the pool. */
export async function producerFor(ctx: Context, t: ImageTarget): Promise<ImageProducer> {
  const plan = await planFor(ctx, t);
  const bs = t.disk.blockSize;
  const store = await ctx.pool.store(bs);
  const slotOf = (lbn: number): number => {
    let lo = 0;
    let hi = plan.lbns.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      const v = plan.lbns[mid]!;
      if (v === lbn) return mid;
      if (v < lbn) lo = mid + 1;
      else hi = mid - 1;
    }
    throw new Error(`lbn ${lbn} is not in the image plan`);
  };
  return new ImageProducer(plan, async (lbn) => {
    const buf = Buffer.allocUnsafe(bs);
    const pbn = plan.pbns[slotOf(lbn)]!;
    // The producer keeps several blocks in flight: let them really overlap on a cold cache.
    await (store.readParallel ? store.readParallel(pbn, buf) : store.read(pbn, buf));
    return buf;
  });
}
