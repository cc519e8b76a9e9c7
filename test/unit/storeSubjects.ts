/**
 * The stores the conformance suite (storeConformance.test.ts) runs: every bottom, and every layer over
 * every bottom, each with the optional methods it offers (found on a scratch instance). A bottom the
 * machine cannot open (O_DIRECT on tmpfs) is listed with `skip` so the report says so.
 */
import { mkdir } from 'node:fs/promises';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import type { BlockStore, RunStore } from '../../src/store/blockStore.js';
import { DirectPoolFileStore } from '../../src/store/directPool.js';
import { PoolFileStore } from '../../src/store/poolFile.js';
import { LevelBlockStore } from '../../src/store/levelBlocks.js';
import { FaultyStore } from '../../src/store/faulty.js';
import { ReadaheadStore } from '../../src/store/readahead.js';
import { WriteBehindStore } from '../../src/store/writeBehind.js';
import { directStack } from '../../src/store/bottoms.js';
import { openDb } from '../../src/meta/db.js';
import { RadosBlockStore } from '../../src/store/radosBlocks.js';

/** Set by `npm run test:ceph` (scripts/test-ceph.sh): a local cluster's ceph.conf and pool. */
const CEPH_CONF = process.env.VDISKFS_TEST_CEPH_CONF;
const CEPH_POOL = process.env.VDISKFS_TEST_CEPH_POOL ?? 'vdiskfs';
const RUN = `${process.pid}-${Date.now().toString(36)}`;

export const OPTIONAL = ['readParallel', 'readRun', 'allocAligned', 'readSync', 'writeSync', 'stageBehind', 'copyBehind', 'copyRoom', 'busy', 'behindRoom', 'syncNow', 'discard', 'trim'] as const;

export interface Opened {
  store: BlockStore;
  /** Close the store (the whole stack) and what it lives in. */
  close(): Promise<void>;
  /** What to close after the bottom store (its database). */
  after?: () => Promise<void>;
}

export interface Subject {
  name: string;
  /** The store cannot be opened here (no O_DIRECT where the tests run). */
  skip: boolean;
  /** The optional methods the store offers. */
  offers: Set<string>;
  /** For a layer: the optional methods of the store it wraps. */
  inner?: Set<string>;
  open(dir: string, blockSize: number): Promise<Opened>;
}

type Open = (dir: string, blockSize: number) => Promise<Opened | null>;

const bottoms: Record<string, Open> = {
  'DirectPoolFileStore (O_DIRECT)': async (dir, bs) => {
    const store = await DirectPoolFileStore.open(join(dir, 'pool.dat'), bs);
    return store && { store, close: () => store.close() };
  },
  'PoolFileStore (page cache)': async (dir, bs) => {
    const store = await PoolFileStore.open(join(dir, 'pool.dat'), bs);
    return { store, close: () => store.close() };
  },
  // Only under `npm run test:ceph`; listed as skipped otherwise. Each instance has its own object names.
  'RadosBlockStore (Ceph, npm run test:ceph)': async (dir, bs) => {
    if (!CEPH_CONF) return null;
    // Object names from the test's directory: a reopen of the same directory finds the same objects.
    const prefix = `t${RUN}-${createHash('sha256').update(dir).digest('hex').slice(0, 16)}`;
    const store = await RadosBlockStore.open({ conf: CEPH_CONF, pool: CEPH_POOL, prefix }, bs);
    return { store, close: () => store.close() };
  },
  LevelBlockStore: async (dir, bs) => {
    const { db } = await openDb(dir, { blockStore: 'leveldb' });
    const store = new LevelBlockStore(db, bs);
    return { store, close: () => store.close(), after: () => db.close() };
  },
};

/** Layers over any inner store they apply to (readahead: one with readRun and readSync; write-behind: a RunStore). */
const layers: Record<string, (inner: BlockStore) => BlockStore | Promise<BlockStore | null>> = {
  ReadaheadStore: async (inner) => (inner.readRun && inner.readSync ? ReadaheadStore.over(inner) : null),
  WriteBehindStore: async (inner) => ('writeRun' in inner ? WriteBehindStore.over(inner as RunStore) : null),
  'ReadaheadStore over WriteBehindStore (bottoms.ts directStack)': async (inner) => (inner instanceof DirectPoolFileStore ? directStack(inner) : null),
  'FaultyStore (empty plan)': (inner) => new FaultyStore(inner, {}),
  'FaultyStore (every write delayed)': (inner) => new FaultyStore(inner, { delayMs: 1 }),
  'FaultyStore (volatile)': (inner) => new FaultyStore(inner, { volatile: true }),
  'FaultyStore over directStack (the fault tests\' stack)': async (inner) => (inner instanceof DirectPoolFileStore ? new FaultyStore(await directStack(inner), {}) : null),
};

function offered(store: BlockStore): Set<string> {
  return new Set(OPTIONAL.filter((m) => typeof (store as unknown as Record<string, unknown>)[m] === 'function'));
}

/** Every subject; `scratch` is a directory to open one instance of each in (to see what it offers). */
export async function storeSubjects(scratch: string): Promise<Subject[]> {
  const out: Subject[] = [];
  let n = 0;
  for (const [name, openBottom] of Object.entries(bottoms)) {
    const probeDir = join(scratch, `${++n}`);
    await mkdir(probeDir);
    const probe = await openBottom(probeDir, 16 * 1024);
    const inner = probe ? offered(probe.store) : new Set<string>();
    const open = async (dir: string, bs: number): Promise<Opened> => {
      const o = await openBottom(dir, bs);
      if (!o) throw new Error(`${name} cannot be opened in ${dir}`);
      return {
        ...o,
        close: async () => {
          await o.close();
          await o.after?.();
        },
      };
    };
    out.push({ name, skip: !probe, offers: inner, open });
    for (const [layerName, wrap] of Object.entries(layers)) {
      const layer = probe && (await wrap(probe.store));
      if (probe && !layer) continue; // does not apply to this bottom
      const offers = layer ? offered(layer) : new Set<string>();
      out.push({
        name: `${layerName} over ${name}`,
        skip: !probe,
        offers,
        inner,
        open: async (dir, bs) => {
          const o = await open(dir, bs);
          const store = (await wrap(o.store))!;
          return {
            store,
            close: async () => {
              await store.close(); // closes the stack down to the bottom
              await o.after?.();
            },
          };
        },
      });
    }
    await probe?.close();
    await probe?.after?.();
  }
  return out;
}
