/**
 * Restoring an image (restore method 1: a new disk of the original geometry; method 2: back into an
 * existing disk, each block to its original logical address). Blocks are staged into fresh physical blocks
 * as the image streams in; nothing is visible until the whole image has been verified (the parser's end
 * event), and then one batch makes it the disk's content. Any failure — a damaged, truncated or foreign
 * image, a full pool, a delta whose base the disk does not hold — frees the staged blocks and changes nothing.
 */
import type { Registry } from '../disk/registry.js';
import { DiskState } from '../disk/context.js';
import { parseImage, type ImageSource } from '../image/index.js';
import type { ImageHeader } from '../image/header.js';
import { busy, errorCode, errorMessage, exists, invalid } from '../errors.js';
import { checkName } from '../disk/names.js';
import { checkBlockSize, checkVirtualSize } from '../util/size.js';
import { blocksFor } from '../util/range.js';
import type { DiskRecord } from '../meta/records.js';
import type { BatchOp } from '../meta/table.js';
import { collectView } from '../disk/viewScan.js';
import { commitChanges } from '../disk/io.js';
import { alreadyZero, needsPreserve, zeroEntry, type Change } from '../disk/plan.js';
import { claimed, claimOf, dropClaim } from '../disk/identity.js';
import type { BlockStore } from '../store/blockStore.js';

export type RestoreTarget = { mode: 'new'; name: string } | { mode: 'into'; name: string };

export interface RestoreResult {
  disk: string;
  kind: 'full' | 'delta';
  blocks: number;
  zeros: number;
  snapId: string;
}

function checkTarget(reg: Registry, target: RestoreTarget): void {
  const ctx = reg.ctx;
  if (target.mode === 'new') {
    checkName(target.name);
    if (ctx.disks.has(target.name)) throw exists(`disk ${target.name}`);
  } else {
    const d = ctx.disk(target.name);
    if (d.isOpen()) throw busy(`disk ${target.name} is open`);
  }
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
  checkInto(reg.ctx.disk(target.name), h);
}

/**
 * The image fits the disk: same block size, and an incremental image applies only onto a disk that provably
 * holds its base (disk/identity.ts).
 */
function checkInto(d: DiskState, h: ImageHeader): void {
  if (d.blockSize !== h.blockSize) throw invalid(`image block size ${h.blockSize} differs from disk ${d.rec.name}'s ${d.blockSize}`);
  if (h.kind !== 'delta') return;
  const holds = claimOf(d);
  if (holds === h.baseSnapId) return;
  const why = holds ? `it holds snapshot ${holds}` : 'it was changed since its last restore (a write, discard, resize, rollback or failed restore), or never restored';
  throw invalid(`disk ${d.rec.name} does not hold base snapshot ${h.diskName}@${h.baseSnapName} (${h.baseSnapId}) of this incremental image: ${why}; restore a full image of ${h.baseSnapName} into it first`);
}

/** Block writes a restore keeps in flight at most when the store cannot stage them (page-cache pool files). */
const MAX_WRITES_IN_FLIGHT = 32;

export async function restoreImage(reg: Registry, source: ImageSource, target: RestoreTarget): Promise<RestoreResult> {
  const ctx = reg.ctx;
  checkTarget(reg, target);
  let header: ImageHeader | undefined;
  let bs = 0;
  let lbns: number[] = [];
  let pbns: number[] = [];
  const zeros: number[] = [];
  let committed = false;
  let store: BlockStore | undefined;
  // Block writes in flight (with O_DIRECT pool files each unstaged one is a disk round trip); every one has
  // settled before the commit, and the first failure fails the restore. A store that stages writes
  // (stageBehind: copied at once into 1 MiB runs of adjacent blocks, written behind) gets the blocks that
  // way, and the restore waits only when no run is free; one promise per run, not per block.
  const writing: Promise<void>[] = [];
  let lastRun: Promise<void> | undefined;
  const track = (w: Promise<void>): void => {
    if (w === lastRun) return;
    lastRun = w;
    w.catch(() => undefined); // a failure is reported by settleWrites, not as an unhandled rejection first
    writing.push(w);
  };
  const settleWrites = async (): Promise<void> => {
    const r = await Promise.allSettled(writing.splice(0));
    const bad = r.find((x): x is PromiseRejectedResult => x.status === 'rejected');
    if (bad) throw bad.reason;
  };
  /** Wait for the oldest writes until `ready()` (or nothing is left in flight). */
  const waitUntil = async (ready: () => boolean): Promise<void> => {
    while (!ready() && writing.length > 0) {
      const w = writing.shift()!;
      try {
        await w;
      } catch (e) {
        writing.unshift(w); // still reported by settleWrites
        throw e;
      }
    }
  };
  try {
    await parseImage(source, {
      header: async (h) => {
        checkHeader(reg, target, h);
        header = h;
        bs = h.blockSize;
        store = await ctx.pool.store(bs);
      },
      block: (lbn, data) => {
        const pbn = ctx.pool.allocate(bs);
        pbns.push(pbn);
        lbns.push(lbn);
        const st = store!;
        if (st.stageBehind && st.behindRoom) {
          if (st.behindRoom(bs)) return track(st.stageBehind(pbn, data)());
          // no run free: wait for the oldest, then stage (one wait per run, not per block)
          return waitUntil(() => st.behindRoom!(bs)).then(() => {
            if (st.behindRoom!(bs)) track(st.stageBehind!(pbn, data)());
            else track(st.write(pbn, Buffer.from(data)));
          });
        }
        // a private copy: the parser's buffer may be the writer's, which is not ours once this returns
        track(st.write(pbn, Buffer.from(data)));
        if (writing.length >= MAX_WRITES_IN_FLIGHT) return waitUntil(() => writing.length < MAX_WRITES_IN_FLIGHT / 2);
      },
      zero: (lbn) => {
        zeros.push(lbn);
      },
    });
    await settleWrites();
    const h = header!;
    if (h.version !== 1) [lbns, pbns] = byLbn(lbns, pbns); // the commit takes the blocks in lbn order, as v1 gives them
    await reg.serialized(async () => {
      checkTarget(reg, target); // the world may have changed while the image streamed in
      if (target.mode === 'new') await commitNew(reg, target.name, h, lbns, pbns);
      else await commitInto(reg, target.name, h, lbns, pbns, zeros);
    });
    committed = true;
    return { disk: target.name, kind: h.kind, blocks: lbns.length, zeros: zeros.length, snapId: h.snapId };
  } finally {
    // a reserved block may be freed only once no write to it is in flight
    await Promise.allSettled(writing);
    if (!committed) for (const pbn of pbns) ctx.pool.free(bs, pbn);
  }
}

/** The (lbn, pbn) pairs sorted by lbn (version 2 images list their slots in the source's physical order). */
export function byLbn(lbns: number[], pbns: number[]): [number[], number[]] {
  const idx = lbns.map((_, i) => i).sort((a, b) => lbns[a]! - lbns[b]!);
  return [idx.map((i) => lbns[i]!), idx.map((i) => pbns[i]!)];
}

async function commitNew(reg: Registry, name: string, h: ImageHeader, lbns: number[], pbns: number[]): Promise<void> {
  const ctx = reg.ctx;
  const rec = ctx.newDiskRecord(name, h.virtualSize, h.blockSize);
  const d = new DiskState(claimed(rec, h.snapId), ctx);
  const ops: BatchOp[] = [ctx.recordOp(d.rec), ctx.seqOp()];
  for (let i = 0; i < lbns.length; i++) ops.push(d.live.putOp(lbns[i]!, { kind: 'data', pbn: pbns[i]!, epoch: 1 }));
  await ctx.commit(ops, true);
  d.allocated = lbns.length;
  ctx.disks.set(name, d);
}

async function commitInto(reg: Registry, name: string, h: ImageHeader, lbns: number[], pbns: number[], zeros: number[]): Promise<void> {
  const ctx = reg.ctx;
  const d = ctx.disk(name);
  const inImage = new Set(lbns);
  const newBlocks = blocksFor(h.virtualSize, h.blockSize);
  await d.gate.exclusively(async () => {
    // Checked again now that nothing else can change the disk: while the image streamed in, the disk may
    // have been opened, written and closed again.
    if (d.isOpen()) throw busy(`disk ${name} is open`);
    checkInto(d, h);
    // From here on the disk may change: it claims nothing until the final batch claims the image's snapshot.
    await dropClaim(ctx, d);
    await ctx.drain();
    // Blocks of the disk that the image does not mention: a full image makes them holes; a delta only drops
    // those past the image's (new) end.
    const current = await collectView(ctx, d, -1, true);
    const extraZeros = current.lbns.filter((lbn) => !inImage.has(lbn) && (h.kind === 'full' || lbn >= newBlocks));
    const zeroSet = [...new Set([...zeros, ...extraZeros])].sort((a, b) => a - b);
    const L = d.latest();
    const epoch = d.rec.epoch;
    const hasBacking = d.rec.backing !== undefined;
    const changes: Change[] = [];
    for (let i = 0; i < lbns.length; i++) {
      const lbn = lbns[i]!;
      const cur = await d.live.get(lbn);
      changes.push({ lbn, cur, next: { kind: 'data', pbn: pbns[i]!, epoch }, preserve: await needsPreserve(d, L, cur, lbn) });
    }
    for (const lbn of zeroSet) {
      const cur = await d.live.get(lbn);
      const next = zeroEntry(hasBacking && lbn < newBlocks, epoch);
      if (alreadyZero(cur, next)) continue;
      changes.push({ lbn, cur, next, preserve: await needsPreserve(d, L, cur, lbn) });
    }
    const rec: DiskRecord = claimed({ ...d.rec, size: h.virtualSize }, h.snapId);
    if (rec.backing) rec.backing = { ...rec.backing, limitBlocks: Math.min(rec.backing.limitBlocks, newBlocks) };
    try {
      // The record (size, claim) takes effect with the batch: if it fails, the disk keeps its old record,
      // which claims nothing any more.
      await commitChanges(ctx, d, changes, [], [ctx.recordOp(rec)], true);
      d.rec = rec;
    } finally {
      d.changed();
    }
  });
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
    await reg.recordHistory(command, 'ok', `${r.kind} image of snapshot ${r.snapId}: ${r.blocks} blocks, ${r.zeros} holes`);
    return r;
  } catch (e) {
    await reg.recordHistory(command, 'error', errorMessage(e).replace(/[\x00-\x1f\x7f]/g, '?'), errorCode(e)).catch(() => undefined);
    throw e;
  }
}
