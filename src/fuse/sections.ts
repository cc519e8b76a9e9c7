/**
 * The backup sections of `.vdisk/`:
 *   copies/<disk>/<snap>          read-only compacted copy (full image) of a snapshot
 *   deltas/<disk>/<base>..<snap>  read-only incremental image between two snapshots (any older base)
 *   import/<newdisk>              write an image here (sequentially) to restore it as a new disk (method 1)
 *   restore/<disk>                write an image here to restore it into the existing disk (method 2)
 * Image files hold their snapshot open while open, so it cannot be deleted under a reader. Restores
 * commit when the writer closes the file (flush): a bad or short image makes that close fail (dd reports
 * it) and leaves nothing behind; damage in the middle already fails the write that carried it. A writer
 * that opened the file read-write may instead read it: the read commits and answers with the restore's
 * result or typed refusal (control/reply.ts), which the CLI uses to report what offline restores report.
 */
import type { Tree, Node, Handle } from './nodes.js';
import type { Registry } from '../disk/registry.js';
import { findTarget, planFor, producerFor, type ImageTarget } from '../image/snapshotImage.js';
import { describeRestore, restoreRecorded, type RestoreResult, type RestoreTarget } from '../restore/restore.js';
import { errorReply, okReply, readReply } from '../control/reply.js';
import { ChunkFeeder } from '../restore/feeder.js';
import { invalid, readOnly, VdiskError } from '../errors.js';
import { checkName } from '../disk/names.js';
import { logger } from '../log.js';

const RO = 0o100444;
/** Restore files: written, then read for the reply (control/reply.ts). */
const WO = 0o100600;

export function installSections(tree: Tree, reg: Registry): void {
  const ctx = reg.ctx;
  const log = logger('sections');

  const imageFile = (t: ImageTarget): Node => {
    const snap = t.disk.rec.snapshots[t.snapIndex]!;
    return {
      kind: 'file',
      stat: async () => {
        const plan = await planFor(ctx, t);
        // An image's content follows from its snapshots, which never change: their creation times stand
        // for it (a snapshot made again under the same name is created later).
        const base = t.baseIndex !== undefined ? t.disk.rec.snapshots[t.baseIndex]!.created : 0;
        return { mode: RO, size: plan.totalLength, blocks: 0, mtime: new Date(Math.max(snap.created, base)) };
      },
      open: async (write) => {
        if (write) throw readOnly('backup images are read-only');
        const ids = [snap.id, ...(t.baseIndex !== undefined ? [t.disk.rec.snapshots[t.baseIndex]!.id] : [])];
        t.disk.pinSnapshots(ids);
        let producer;
        try {
          producer = await producerFor(ctx, t);
        } catch (e) {
          t.disk.unpinSnapshots(ids);
          throw e;
        }
        const p = producer;
        let released = false;
        return {
          read: (dst, pos) => p.readInto(pos, dst),
          readOnly: true,
          release: async () => {
            if (released) return;
            released = true;
            t.disk.unpinSnapshots(ids);
          },
        } satisfies Handle;
      },
      truncate: () => Promise.reject(readOnly('backup images are read-only')),
    };
  };

  tree.addSection('copies', (rest) => {
    if (rest.length === 0) return { kind: 'dir', list: () => reg.names() };
    const d = ctx.disks.get(rest[0]!);
    if (!d) return undefined;
    if (rest.length === 1) return { kind: 'dir', list: () => d.rec.snapshots.map((s) => s.name) };
    if (rest.length > 2 || !d.rec.snapshots.some((s) => s.name === rest[1])) return undefined;
    return imageFile(findTarget(ctx, d.rec.name, rest[1]!));
  });

  tree.addSection('deltas', (rest) => {
    if (rest.length === 0) return { kind: 'dir', list: () => reg.names() };
    const d = ctx.disks.get(rest[0]!);
    if (!d) return undefined;
    // Listing shows consecutive pairs; any older base resolves by name.
    if (rest.length === 1) return { kind: 'dir', list: () => d.rec.snapshots.slice(1).map((s, i) => `${d.rec.snapshots[i]!.name}..${s.name}`) };
    const m = rest.length === 2 ? /^(.+)\.\.(.+)$/.exec(rest[1]!) : null;
    if (!m) return undefined;
    try {
      return imageFile(findTarget(ctx, d.rec.name, m[2]!, m[1]!));
    } catch {
      return undefined;
    }
  });

  const importers = new Map<string, Importer>();

  const importNode = (target: RestoreTarget): Node => ({
    kind: 'file',
    stat: () => ({ mode: WO, size: importers.get(key(target))?.received ?? 0, blocks: 0, mtime: new Date(ctx.clock.tick()) }),
    open: async () => {
      const k = key(target);
      if (importers.has(k)) throw new VdiskError('BUSY', `a restore to ${target.name} is already in progress`);
      const imp = new Importer(reg, target);
      importers.set(k, imp);
      const done = (): void => {
        if (importers.get(k) === imp) importers.delete(k);
      };
      let finished = false;
      let finishing: Promise<RestoreResult> | undefined;
      let reply: Buffer | undefined;
      // Once: the flush of every dup'ed descriptor, a read and the release all wait for the same end.
      const finish = (): Promise<RestoreResult> => {
        finished = true;
        finishing ??= imp.finish().finally(done);
        return finishing;
      };
      // The reply to a read: the restore's result or the typed reason it failed (control/reply.ts).
      const replyOf = async (): Promise<Buffer> => {
        try {
          const r = await finish();
          return okReply(`restored ${describeRestore(r, target)}`, r);
        } catch (e) {
          return errorReply(e);
        }
      };
      return {
        // A read commits the image written so far (as close does) and returns the reply; a reader that
        // wrote nothing gets a refusal and the restore is abandoned at close.
        directIO: true,
        read: async (dst, pos) => {
          if (!reply && imp.received === 0 && !finished && !imp.failed) return readReply(errorReply(invalid('no image data was written')), dst, pos);
          reply ??= await replyOf();
          return readReply(reply, dst, pos);
        },
        write: (src, pos) => imp.write(src, pos),
        truncate: async (size) => {
          if (size !== 0 || imp.received !== 0) throw invalid('restore files can only be written from the start');
        },
        // dd and shells dup the descriptor and close the original before writing: a close with no data
        // yet is not the end of the image.
        flush: async () => {
          if (imp.received > 0) await finish();
        },
        release: async () => {
          // If flush did not run (or failed), make sure staged blocks are freed.
          if (!finished && imp.received > 0) await finish().catch((e) => log.info({ err: e }, 'restore abandoned'));
          else if (!finished) {
            finished = true;
            imp.abort();
            done();
          }
        },
      } satisfies Handle;
    },
    truncate: async () => undefined,
  });
  const key = (t: RestoreTarget): string => `${t.mode}:${t.name}`;

  tree.addSection('import', (rest) => {
    if (rest.length === 0) return { kind: 'dir', list: () => [...importers.values()].filter((i) => i.target.mode === 'new').map((i) => i.target.name) };
    if (rest.length > 1) return undefined;
    try {
      checkName(rest[0]!);
    } catch {
      return undefined;
    }
    return importNode({ mode: 'new', name: rest[0]! });
  });

  tree.addSection('restore', (rest) => {
    if (rest.length === 0) return { kind: 'dir', list: () => reg.names() };
    if (rest.length > 1 || !ctx.disks.has(rest[0]!)) return undefined;
    return importNode({ mode: 'into', name: rest[0]! });
  });
}

/** One restore in progress through a FUSE file: sequential writes feed the image parser. */
class Importer {
  received = 0;
  private feeder = new ChunkFeeder();
  private result: Promise<RestoreResult>;
  private error: unknown = null;

  constructor(reg: Registry, readonly target: RestoreTarget) {
    this.result = restoreRecorded(reg, this.feeder, target).catch((e) => {
      this.error = e;
      this.feeder.fail(e);
      throw e;
    });
    this.result.catch(() => undefined);
  }

  /** The restore was refused already (the target, or the image so far). */
  get failed(): boolean {
    return this.error !== null;
  }

  async write(src: Buffer, pos: number): Promise<number> {
    if (this.error) throw this.error;
    if (pos !== this.received) throw invalid(`restore images must be written sequentially (expected offset ${this.received}, got ${pos})`);
    this.received += src.length;
    await this.feeder.push(src);
    return src.length;
  }

  abort(): void {
    this.feeder.fail(invalid('restore abandoned'));
    this.feeder.end();
  }

  async finish(): Promise<RestoreResult> {
    if (this.error) throw this.error;
    if (this.received === 0) throw invalid('no image was written');
    this.feeder.end();
    return this.result;
  }
}
