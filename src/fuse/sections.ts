/**
 * The backup sections of `.vdisk/`:
 *   copies/<disk>/<snap>          read-only compacted copy (full image) of a snapshot
 *   deltas/<disk>/<base>..<snap>  read-only incremental image between two snapshots (any older base)
 *   import/<newdisk>              write an image here (sequentially) to restore it as a new disk (method 1)
 *   restore/<disk>                write an image here to restore it into the existing disk (method 2);
 *   restore/<disk>,force,resize,create  … with those options of `vdiskfs restore --into` (any of them)
 *   attached/<name>               read-only disk file of an image chain attached with `attach` (no restore)
 * Image files hold their snapshot open while open, so it cannot be deleted under a reader. Restores
 * commit when the writer closes the file (flush): a bad or short image makes that close fail (dd reports
 * it) and leaves nothing behind; damage in the middle already fails a write (the one that carried it or
 * one soon after: IMPORT_AHEAD). A writer
 * that opened the file read-write may instead read it: the read commits and answers with the restore's
 * result or typed refusal (control/reply.ts), which the CLI uses to report what offline restores report.
 */
import type { Tree, Node, Handle } from './nodes.js';
import type { Registry } from '../disk/registry.js';
import { describeImage, findTarget, planFor, producerFor, type ImageTarget } from '../image/snapshotImage.js';
import { describeRestore, restoreRecorded, type RestoreResult, type RestoreTarget } from '../restore/restore.js';
import { errorReply, okReply, readReply } from '../control/reply.js';
import { ChunkFeeder } from '../restore/feeder.js';
import { invalid, readOnly, VdiskError } from '../errors.js';
import { checkName } from '../disk/names.js';
import { logger } from '../log.js';
import { enableAttachments } from '../control/attachments.js';

const RO = 0o100444;
/** Restore files: written, then read for the reply (control/reply.ts). */
const WO = 0o100600;

export function installSections(tree: Tree, reg: Registry): void {
  const log = logger('sections');

  const imageFile = (t: ImageTarget): Node => {
    // An image's content follows from its snapshots, which never change: their creation times stand for it
    // (a snapshot made again under the same name is created later).
    const mtime = new Date(Math.max(t.view.snapshot()!.created, t.base?.snapshot()!.created ?? 0));
    return {
      kind: 'file',
      stat: async () => ({ mode: RO, size: (await planFor(t)).totalLength, blocks: 0, mtime }),
      open: async (write) => {
        if (write) throw readOnly('backup images are read-only');
        const pins = [t.view.pin(), ...(t.base ? [t.base.pin()] : [])];
        const unpin = (): void => pins.forEach((release) => release());
        let producer;
        try {
          producer = await producerFor(t);
        } catch (e) {
          unpin();
          throw e;
        }
        const p = producer;
        // A backup through the mount (`dd` of this file, `vdiskfs backup` of a mounted store) is recorded in
        // the history once its reader has been given the image's last byte.
        let complete = false;
        return {
          read: async (dst, pos) => {
            const n = await p.readInto(pos, dst);
            if (n > 0 && pos + n >= p.size) complete = true;
            return n;
          },
          readOnly: true,
          release: async () => {
            unpin();
            if (!complete) return;
            complete = false;
            const what = `backup ${t.view.name}${t.base ? ` since ${t.base.snapshot()?.name ?? '?'}` : ''}`;
            await reg.recordHistory(what, 'ok', `${describeImage(p.plan)}: ${p.size} bytes read through the mount`).catch((e: unknown) => log.warn({ err: e }, 'history not written'));
          },
        } satisfies Handle;
      },
      truncate: () => Promise.reject(readOnly('backup images are read-only')),
    };
  };

  /** A disk's snapshot names, or undefined when there is no such disk. */
  const snapshotsOf = (name: string): string[] | undefined => (reg.has(name) ? reg.diskView(name).snapshotNames() : undefined);

  tree.addSection('copies', (rest) => {
    if (rest.length === 0) return { kind: 'dir', list: () => reg.names() };
    const disk = rest[0]!;
    const names = snapshotsOf(disk);
    if (!names) return undefined;
    if (rest.length === 1) return { kind: 'dir', list: () => snapshotsOf(disk) ?? [] };
    if (rest.length > 2 || !names.includes(rest[1]!)) return undefined;
    return imageFile(findTarget(reg, disk, rest[1]!));
  });

  tree.addSection('deltas', (rest) => {
    if (rest.length === 0) return { kind: 'dir', list: () => reg.names() };
    const disk = rest[0]!;
    if (!snapshotsOf(disk)) return undefined;
    // Listing shows consecutive pairs; any older base resolves by name.
    if (rest.length === 1) {
      return {
        kind: 'dir',
        list: () => {
          const names = snapshotsOf(disk) ?? [];
          return names.slice(1).map((s, i) => `${names[i]}..${s}`);
        },
      };
    }
    const m = rest.length === 2 ? /^(.+)\.\.(.+)$/.exec(rest[1]!) : null;
    if (!m) return undefined;
    try {
      return imageFile(findTarget(reg, disk, m[2]!, m[1]!));
    } catch {
      return undefined;
    }
  });

  // attached/<name>: an image chain attached with `attach`, read-only, read through the images' tables.
  const attachments = enableAttachments(reg);
  tree.addSection('attached', (rest) => {
    if (rest.length === 0) return { kind: 'dir', list: () => attachments.names() };
    if (rest.length > 1 || !attachments.has(rest[0]!)) return undefined;
    const a = attachments.get(rest[0]!);
    const c = a.chain;
    const refuse = () => Promise.reject(readOnly('attached images are read-only'));
    return {
      kind: 'file',
      stat: () => ({ mode: RO, size: c.virtualSize, blocks: (c.lbns.length * c.blockSize) / 512, blksize: c.blockSize, mtime: a.attachedAt }),
      open: async (write) => {
        if (write) throw readOnly('attached images are read-only');
        a.opens++;
        let open = true;
        return {
          read: (dst, pos) => c.read(dst, pos),
          seek: (pos, what) => Promise.resolve(c.seek(pos, what)),
          readOnly: true,
          write: refuse,
          truncate: refuse,
          release: async () => {
            if (open) a.opens--;
            open = false;
          },
        } satisfies Handle;
      },
      truncate: refuse,
    };
  });

  const importers = new Map<string, Importer>();

  const importNode = (target: RestoreTarget): Node => ({
    kind: 'file',
    stat: () => ({ mode: WO, size: importers.get(key(target))?.received ?? 0, blocks: 0, mtime: new Date(reg.changeTime()) }),
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
          return okReply(`restored ${describeRestore(r)}`, r);
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
        write: (src, pos, later) => imp.write(src, pos, later),
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
    const target = rest.length === 1 ? intoTarget(rest[0]!) : undefined;
    if (!target || (!target.create && !reg.has(target.name))) return undefined;
    return importNode(target);
  });
}

/**
 * `restore/<disk>` restores into the disk; `restore/<disk>,force,resize` adds the options of
 * `vdiskfs restore --into <disk> --force --resize --create` (names cannot hold ','). Unknown options or a
 * bad name: no such file.
 */
function intoTarget(file: string): (RestoreTarget & { mode: 'into' }) | undefined {
  const [name, ...opts] = file.split(',');
  const target = { mode: 'into' as const, name: name!, force: false, resize: false, create: false };
  for (const o of opts) {
    if (o !== 'force' && o !== 'resize' && o !== 'create') return undefined;
    target[o] = true;
  }
  try {
    checkName(target.name);
  } catch {
    return undefined;
  }
  return target;
}

/**
 * Image bytes a restore file takes ahead of the parser: a write is answered once its chunk is queued, so
 * the writer's next request crosses the kernel while the parser checks and stages this one (a writer such
 * as dd has one request in flight; answering only after the parse made the two take turns). A write waits
 * while more than this is queued. Damage is still refused before anything changes: the write it is in, or
 * one at most this many bytes later, or the close fails.
 */
const IMPORT_AHEAD = 8 * 1024 * 1024;

/** One restore in progress through a FUSE file: sequential writes feed the image parser. */
class Importer {
  received = 0;
  private feeder = new ChunkFeeder();
  private result: Promise<RestoreResult>;
  private error: unknown = null;
  /** Chunks queued for the parser and not yet taken, oldest first, with their sizes. */
  private ahead: { taken: Promise<void>; bytes: number }[] = [];
  private aheadBytes = 0;

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

  /**
   * Queue the chunk for the parser. With room ahead, the write is answered at once and the chunk is handed
   * to the parser after the reply has gone (`later`): the parser would otherwise work through the whole chunk
   * in the same tick, before the reply. Without room, the write waits for the oldest queued chunk.
   */
  write(src: Buffer, pos: number, later: (work: () => void) => void): number | Promise<number> {
    if (this.error) throw this.error;
    if (pos !== this.received) throw invalid(`restore images must be written sequentially (expected offset ${this.received}, got ${pos})`);
    this.received += src.length;
    this.aheadBytes += src.length;
    const answerNow = this.aheadBytes <= IMPORT_AHEAD;
    if (answerNow) this.feeder.hold();
    const taken = this.feeder.push(src);
    taken.catch(() => undefined); // the parser's failure: this.error, thrown by a later write or finish
    this.ahead.push({ taken, bytes: src.length });
    if (answerNow) {
      later(() => this.feeder.release());
      return src.length;
    }
    return (async () => {
      while (this.aheadBytes > IMPORT_AHEAD) {
        const first = this.ahead.shift()!;
        this.aheadBytes -= first.bytes;
        await first.taken;
      }
      return src.length;
    })();
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
