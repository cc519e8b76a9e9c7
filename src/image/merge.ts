// Merging a chain (a full image and the deltas after it) into one full image of the chain's last snapshot,
// without a store: the producer's slots are the chain's surviving blocks, read straight from the input
// images (each input's checksum groups verified as they are read). The merged image carries the last
// snapshot's identity, so it restores (and takes later deltas) exactly as restoring the full image and
// applying each delta would. Its source allocation record holds each block's position in the inputs
// taken one after another (image 0's slots, then image 1's, …), so the version 2 slot order reads every
// input front to back, once.

import { planImage } from './layout.js';
import { ImageProducer } from './writer.js';
import type { ImageChain } from './seekable.js';

export function mergeChain(chain: ImageChain): ImageProducer {
  const starts: number[] = [];
  let total = 0;
  for (const img of chain.images) {
    starts.push(total);
    total += img.header.slotCount;
  }
  const last = chain.last;
  const plan = planImage({
    kind: 'full',
    virtualSize: last.virtualSize,
    blockSize: last.blockSize,
    dataLbns: chain.lbns,
    sourcePbns: chain.places.map((p) => starts[p.image]! + p.slot),
    zeroLbns: [],
    sourceAllocated: chain.lbns.length,
    diskName: last.diskName,
    snapName: last.snapName,
    snapId: last.snapId,
    snapCreated: last.snapCreated,
  });
  const bs = plan.blockSize;
  /** The input image holding input position `pos` (starts ascending). */
  const imageAt = (pos: number): number => {
    let i = starts.length - 1;
    while (starts[i]! > pos) i--;
    return i;
  };
  return new ImageProducer(plan, {
    readSlots: async (first, count, dst) => {
      for (let k = 0; k < count; k++) {
        const pos = plan.pbns[first + k]!;
        const i = imageAt(pos);
        await chain.images[i]!.readSlot(pos - starts[i]!, dst.subarray(k * bs, (k + 1) * bs));
      }
    },
  });
}
