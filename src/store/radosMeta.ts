/**
 * A `rados` store's metadata in the cluster, so that the store lives there: the store directory's LevelDB
 * becomes a cache that any machine can rebuild, and an exclusive lock with a lease in the cluster keeps two
 * daemons (two machines, two store directories) from writing at once. Layout (KEYSPACE.md, *Metadata in
 * the cluster*), objects in the store's pool named by its prefix:
 * - `<prefix>.meta.head`: JSON {ckpt, parts, from}: the newest checkpoint (the sequence number of the last
 *   journal record it contains, or null for none) in `parts` objects, and the first journal record after
 *   it. Written only by a checkpoint, after its parts; it carries the lock.
 * - `<prefix>.meta.j.<seq:12 hex>`: journal record seq: JSON {seq, ops}, the ops of one LevelDB write
 *   (batch, put, del) in the order they were applied.
 * - `<prefix>.meta.c.<ckpt:12 hex>.<part:4 hex>`: a checkpoint: JSON [[key, value], …] of every key.
 * Rules: every write to the local database goes to the journal first (one object write, acknowledged once
 * every replica has it) and is applied locally after, with `meta!journal` (the last record applied) in the
 * same local batch; so the cluster is never behind what the local database says, and a local database
 * that is behind (a crash between the two, or another machine wrote since) catches up at open by applying
 * the records after its own (catchUp), or is rebuilt from the checkpoint when the journal no longer reaches
 * back to it. A clean close writes a checkpoint and removes the records and the checkpoint it replaces. A
 * crash during a checkpoint leaves the old head, whose records are all still there.
 * The lock: `rados_lock_exclusive` on the head object with a lease (LEASE_S; renewed every third of it);
 * a daemon that dies loses it when the lease runs out. If renewing fails, every later write fails (EIO), so
 * a daemon that lost its lease never writes over a newer holder's journal.
 */
import { hostname } from 'node:os';
import { randomUUID } from 'node:crypto';
import type { Db } from '../meta/db.js';
import type { RadosRecord } from '../meta/records.js';
import { radosConnect, type RadosNative } from './rados.js';
import { VdiskError } from '../errors.js';
import { logger } from '../log.js';

const log = logger('rados-meta');

/** Local key: the last journal record this database applied (never journaled, never checkpointed). */
export const JOURNAL_KEY = 'meta!journal';
const LOCK_NAME = 'vdiskfs';
const CKPT_PART_BYTES = 4 * 1024 * 1024;
/** The lock's lease in seconds (VDISKFS_RADOS_LEASE_S, for tests). */
const leaseSeconds = (): number => Number(process.env.VDISKFS_RADOS_LEASE_S ?? 30);

interface Head {
  ckpt: number | null;
  parts: number;
  from: number;
}

type Op = { type: 'put'; key: string; value: string } | { type: 'del'; key: string };

const hex = (n: number, w: number): string => n.toString(16).padStart(w, '0');

export class ClusterMeta {
  private lastSeq = 0;
  private head: Head = { ckpt: null, parts: 0, from: 1 };
  private lost: Error | null = null;
  private renewer: NodeJS.Timeout | null = null;
  private writes: Promise<unknown> = Promise.resolve();
  private readonly cookie = `${hostname()}:${process.pid}:${randomUUID().slice(0, 8)}`;

  private constructor(
    private r: RadosNative,
    private h: unknown,
    private rec: RadosRecord,
  ) {}

  /** Connect and take the store's lock (LOCKED, naming the holder's lease, when another daemon has it). */
  static async open(rec: RadosRecord, what: string): Promise<ClusterMeta> {
    const { r, h } = await radosConnect(rec.conf, rec.pool);
    const m = new ClusterMeta(r, h, rec);
    const lease = leaseSeconds();
    try {
      await r.lock(h, m.obj('head'), LOCK_NAME, m.cookie, `vdiskfs on ${hostname()} pid ${process.pid} (${what})`, lease, false);
    } catch (e) {
      await r.close(h).catch(() => undefined);
      if ((e as { errno?: number }).errno === 16 /* EBUSY */) {
        throw new VdiskError('LOCKED', `store ${rec.prefix} in Ceph pool ${rec.pool} is in use by another vdiskfs (its lock in the cluster; a daemon that died loses it within ${lease} s)`);
      }
      throw new VdiskError('IO', `cannot lock store ${rec.prefix} in Ceph pool ${rec.pool}: ${(e as Error).message}`, { cause: e });
    }
    m.renewer = setInterval(() => {
      r.lock(h, m.obj('head'), LOCK_NAME, m.cookie, `vdiskfs on ${hostname()} pid ${process.pid} (${what})`, lease, true).catch((e: Error) => {
        m.lost ??= new VdiskError('IO', `lost the lock of store ${rec.prefix} in the cluster (${e.message}): no more writes`);
        log.error({ err: e }, 'could not renew the store lock in the cluster: writes now fail');
      });
    }, (lease * 1000) / 3);
    m.renewer.unref();
    m.head = (await m.readJson<Head>(m.obj('head'))) ?? m.head;
    return m;
  }

  private obj(kind: 'head' | 'journal' | 'ckpt', a = 0, b = 0): string {
    const p = `${this.rec.prefix}.meta`;
    return kind === 'head' ? `${p}.head` : kind === 'journal' ? `${p}.j.${hex(a, 12)}` : `${p}.c.${hex(a, 12)}.${hex(b, 4)}`;
  }

  private async readJson<T>(obj: string): Promise<T | undefined> {
    const size = await this.r.size(this.h, obj);
    if (size <= 0) return undefined; // none, or the empty object a lock creates
    const buf = Buffer.alloc(size);
    const n = await this.r.read(this.h, obj, buf, 0);
    return JSON.parse(buf.subarray(0, n).toString('utf8')) as T;
  }

  private async writeJson(obj: string, v: unknown): Promise<void> {
    await this.r.writeFull(this.h, obj, Buffer.from(JSON.stringify(v)));
  }

  /** Whether the cluster holds this store's metadata (a head or a first journal record). */
  async exists(): Promise<boolean> {
    return (await this.r.size(this.h, this.obj('head'))) > 0 || (await this.r.size(this.h, this.obj('journal', 1))) >= 0;
  }

  /** Remove the empty head object taking the lock created (a store that is not there), then close. */
  async abandon(): Promise<void> {
    if ((await this.r.size(this.h, this.obj('head'))) === 0) await this.r.remove(this.h, this.obj('head')); // the lock goes with it
    await this.close();
  }

  /**
   * Bring the local database up to the cluster's state: rebuilt from the checkpoint when the journal no
   * longer reaches back to what it has applied (or it has nothing), then every later journal record
   * applied in order. Returns the number of records applied.
   */
  async catchUp(db: Db): Promise<number> {
    const [mark] = await db.getMany([JOURNAL_KEY]);
    let local = Number(mark ?? 0);
    // never in step with the cluster (a new store directory), or the journal no longer reaches back to it
    if (mark === undefined || local < this.head.from - 1) {
      // wipe and load the checkpoint (ckpt = its last record)
      const keys: string[] = [];
      for await (const k of db.keys()) keys.push(k);
      for (let i = 0; i < keys.length; i += 10_000) await db.batch(keys.slice(i, i + 10_000).map((key) => ({ type: 'del' as const, key })));
      for (let p = 0; p < this.head.parts; p++) {
        const pairs = await this.readJson<[string, string][]>(this.obj('ckpt', this.head.ckpt!, p));
        if (!pairs) throw new VdiskError('CORRUPT', `store ${this.rec.prefix}: checkpoint part ${p} of ${this.head.parts} is missing in the cluster`);
        await db.batch(pairs.map(([key, value]) => ({ type: 'put' as const, key, value })));
      }
      local = this.head.ckpt ?? 0;
      await db.put(JOURNAL_KEY, String(local), { sync: true });
    }
    let applied = 0;
    for (let seq = local + 1; ; seq++) {
      const rec = await this.readJson<{ seq: number; ops: Op[] }>(this.obj('journal', seq));
      if (!rec) break;
      await db.batch([...rec.ops, { type: 'put', key: JOURNAL_KEY, value: String(seq) }], { sync: true });
      local = seq;
      applied++;
    }
    this.lastSeq = local;
    return applied;
  }

  /**
   * From now on every write to db (batch, put, del) is a journal record in the cluster first, applied
   * locally after it with meta!journal; writes are ordered (one at a time).
   */
  async attach(db: Db, fresh = false): Promise<void> {
    if (fresh) await db.put(JOURNAL_KEY, '0', { sync: true }); // in step: a new store, all of it in the first checkpoint
    const batch = db.batch.bind(db) as (ops: Op[], opts?: { sync?: boolean }) => Promise<void>;
    const write = (ops: Op[], opts?: { sync?: boolean }): Promise<void> => {
      const p = this.writes.then(async () => {
        if (this.lost) throw this.lost;
        const seq = this.lastSeq + 1;
        await this.writeJson(this.obj('journal', seq), { seq, ops });
        this.lastSeq = seq;
        await batch([...ops, { type: 'put', key: JOURNAL_KEY, value: String(seq) }], opts);
      });
      this.writes = p.catch(() => undefined);
      return p;
    };
    const d = db as unknown as Record<string, unknown>;
    d.batch = (ops?: Op[], opts?: { sync?: boolean }) => {
      if (!Array.isArray(ops)) throw new Error('a rados store journals array batches only');
      return write(ops, opts);
    };
    d.put = (key: string, value: string, opts?: { sync?: boolean }) => write([{ type: 'put', key, value }], opts);
    d.del = (key: string, opts?: { sync?: boolean }) => write([{ type: 'del', key }], opts);
  }

  /**
   * Write every key of db as a checkpoint of the journal so far, point the head at it, then remove the
   * records and the checkpoint it replaces.
   */
  async checkpoint(db: Db): Promise<void> {
    await this.writes;
    if (this.lost) throw this.lost;
    const seq = this.lastSeq;
    if (this.head.ckpt === seq && seq > 0) return;
    let part: [string, string][] = [];
    let bytes = 0;
    let parts = 0;
    const flush = async (): Promise<void> => {
      await this.writeJson(this.obj('ckpt', seq, parts++), part);
      part = [];
      bytes = 0;
    };
    for await (const [k, v] of db.iterator()) {
      if (k === JOURNAL_KEY) continue;
      part.push([k, v]);
      bytes += k.length + v.length + 8;
      if (bytes >= CKPT_PART_BYTES) await flush();
    }
    if (part.length || parts === 0) await flush();
    const old = this.head;
    this.head = { ckpt: seq, parts, from: seq + 1 };
    await this.writeJson(this.obj('head'), this.head);
    for (let s = old.from; s <= seq; s++) await this.r.remove(this.h, this.obj('journal', s));
    if (old.ckpt !== null && old.ckpt !== seq) for (let p = 0; p < old.parts; p++) await this.r.remove(this.h, this.obj('ckpt', old.ckpt, p));
  }

  /** Stop renewing, give the lock back and disconnect (the checkpoint is the caller's: checkpoint()). */
  async close(): Promise<void> {
    if (this.renewer) clearInterval(this.renewer);
    this.renewer = null;
    await this.writes;
    await this.r.unlock(this.h, this.obj('head'), LOCK_NAME, this.cookie).catch(() => undefined);
    await this.r.close(this.h);
  }
}
