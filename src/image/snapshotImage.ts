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
import { pbnRuns, planImage, type ImagePlan } from './layout.js';
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

/**
 * A producer of the image bytes. Slots are read by physical number straight from the pool: each piece of
 * the image in runs of physically consecutive blocks (pbnRuns), one request per run, all of a piece's runs
 * at once. Version 2 images hold their slots in physical order, so a sequential copy reads the pool
 * sequentially, in requests as large as a piece (2 MiB) wherever the snapshot's blocks are adjacent.
 */
export async function producerFor(ctx: Context, t: ImageTarget): Promise<ImageProducer> {
  const plan = await planFor(ctx, t);
  const bs = t.disk.blockSize;
  const store = await ctx.pool.store(bs);
  const readRun = async (pbn: number, count: number, dst: Buffer): Promise<void> => {
    if (store.readRun) return store.readRun(pbn, count, dst);
    await Promise.all(Array.from({ length: count }, (_, i) => {
      const b = dst.subarray(i * bs, (i + 1) * bs);
      return store.readParallel ? store.readParallel(pbn + i, b) : store.read(pbn + i, b);
    }));
  };
  return new ImageProducer(plan, {
    readSlots: async (first, count, dst) => {
      await Promise.all(pbnRuns(plan.pbns, first, first + count).map(([s, n]) =>
        readRun(plan.pbns[s]!, n, dst.subarray((s - first) * bs, (s - first + n) * bs))));
    },
    ...(store.allocAligned ? { alloc: (bytes: number) => store.allocAligned!(bytes) } : {}),
  });
}
