// Shared fixtures for image tests: a seeded PRNG and small deterministic images.

import { ImageProducer, planImage, readImage, type ImageEvent, type ImagePlanInput, type ImageSource } from '../../src/image/index.js';

import { prng } from '../prng.js';

export { prng };

export function randomBytes(rnd: () => number, n: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i++) b[i] = (rnd() * 256) | 0;
  return b;
}

export interface Fixture {
  input: ImagePlanInput;
  blocks: Map<number, Buffer>;
  producer: ImageProducer;
  reads: { count: number };
}

/** Build an image of `slots` random blocks (and `zeros` hole lbns for a delta) over `virtualBlocks`. */
export function makeFixture(o: { seed: number; slots: number; zeros?: number; blockSize?: number;
  virtualBlocks?: number; kind?: 'full' | 'delta' }): Fixture {
  const rnd = prng(o.seed);
  const blockSize = o.blockSize ?? 4096;
  const kind = o.kind ?? (o.zeros ? 'delta' : 'full');
  const virtualBlocks = o.virtualBlocks ?? (o.slots + (o.zeros ?? 0)) * 3 + 5;
  const chosen = new Set<number>();
  while (chosen.size < o.slots + (o.zeros ?? 0)) chosen.add(Math.floor(rnd() * virtualBlocks));
  const all = [...chosen];
  const dataLbns = all.slice(0, o.slots).sort((a, b) => a - b);
  const zeroLbns = all.slice(o.slots).sort((a, b) => a - b);
  const blocks = new Map<number, Buffer>();
  for (const lbn of dataLbns) {
    // Mostly random, some blocks with repeated patterns to vary content.
    blocks.set(lbn, rnd() < 0.8 ? randomBytes(rnd, blockSize) : Buffer.alloc(blockSize, lbn & 0xff));
  }
  const input: ImagePlanInput = {
    kind, virtualSize: virtualBlocks * blockSize - 123, blockSize, dataLbns,
    sourcePbns: dataLbns.map((_, i) => 1000 + i * 3), zeroLbns,
    sourceAllocated: o.slots + 7, diskName: 'disk-α', snapName: `snap${o.seed}`, snapId: `id-${o.seed}`,
    snapCreated: 1_700_000_000_000 + o.seed,
    ...(kind === 'delta' ? { baseSnapId: 'base-id', baseSnapName: 'base' } : {}),
  };
  const reads = { count: 0 };
  const producer = new ImageProducer(planImage(input), async (lbn) => {
    reads.count++;
    const b = blocks.get(lbn);
    if (!b) throw new Error(`no block ${lbn}`);
    return b;
  });
  return { input, blocks, producer, reads };
}

export async function collect(src: AsyncIterable<Uint8Array>): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of src) parts.push(Buffer.from(c));
  return Buffer.concat(parts);
}

/** Yield `buf` in chunks of `size` bytes (or sizes from `sizes` cyclically). */
export async function* chunked(buf: Buffer, size: number | number[]): AsyncGenerator<Buffer> {
  const sizes = typeof size === 'number' ? [size] : size;
  for (let pos = 0, k = 0; pos < buf.length; k++) {
    const n = sizes[k % sizes.length]!;
    yield buf.subarray(pos, pos + n);
    pos += n;
  }
}

/** All events of a parse, or the thrown error along with the events emitted before it. */
export async function parseAll(src: ImageSource): Promise<{ events: ImageEvent[]; error?: unknown }> {
  const events: ImageEvent[] = [];
  try {
    for await (const ev of readImage(src)) events.push(ev);
    return { events };
  } catch (error) {
    return { events, error };
  }
}
