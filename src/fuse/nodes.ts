/**
 * The tree the mount shows, as FUSE-agnostic nodes over the core: a path resolves to a directory (a list
 * of names) or a file (stat + open -> handle). Errors are the core's typed errors; mount.ts maps them to
 * errno (errno.ts). Rendered files (status, history) are rendered at open and served from that buffer.
 */
import type { Registry } from '../disk/registry.js';
import { runLine } from '../control/commands.js';
import { renderStatus, storeStatus } from '../control/status.js';
import { readOnly, invalid } from '../errors.js';
import { errorReply, okReply, readReply } from '../control/reply.js';

export interface NodeStat {
  mode: number;
  size: number;
  blocks: number;
  blksize?: number;
  mtime: Date;
}

export interface Handle {
  /** Open with direct_io: no page cache, reads not cut at a size the kernel learned elsewhere. */
  directIO?: boolean;
  /** The size this handle reads (fstat of the descriptor), when it differs from a fresh stat's. */
  size?(): number;
  /** lseek SEEK_DATA / SEEK_HOLE: the offset, or null for ENXIO. Without it: no holes but the end. */
  seek?(offset: number, what: 'data' | 'hole'): Promise<number | null>;
  /** fallocate PUNCH_HOLE / ZERO_RANGE (keepSize: KEEP_SIZE was given). Without it: EOPNOTSUPP (EROFS if readOnly). */
  discard?(offset: number, length: number, keepSize: boolean): Promise<void>;
  readOnly?: boolean;
  /** A byte count now, or a promise of it (disk layer: view.ts). */
  read?(dst: Buffer, pos: number): number | Promise<number>;
  /** A byte count now (with the rest of the work handed to `later`: see disk/write.ts), or a promise. */
  write?(src: Buffer, pos: number, later: (work: () => void) => void): number | Promise<number>;
  truncate?(size: number): Promise<void>;
  /** Make the file's writes durable: undefined when done already, else a promise. */
  fsync?(): Promise<void> | undefined;
  /** Called at every close(2) of a descriptor; its error is close's error (dd reports it). */
  flush?(): Promise<void>;
  release?(): Promise<void>;
}

export type Node =
  | { kind: 'dir'; list(): string[] }
  | { kind: 'file'; stat(): Promise<NodeStat> | NodeStat; open(write: boolean): Promise<Handle>; truncate?(size: number): Promise<void> };

const DIR = 0o040755;
const RW = 0o100644;
const RO = 0o100444;

export const CONTROL_DIR = '.vdisk';
/** FUSE max_write and max_read we ask for: the kernel cuts larger writes into pieces of max_write bytes. */
export const MAX_WRITE = 1024 * 1024;
/** The longest line the control file takes (a line may span pieces of one write(2)). */
const MAX_LINE = 128 * 1024;

export class Tree {
  private started = new Date();
  /** Extra nodes under .vdisk (copies/, deltas/, import/, restore/) registered by other modules. */
  private extras = new Map<string, (rest: string[]) => Node | undefined>();
  /** The max_write the kernel and libfuse agreed on at init (the ctl file cuts lines at its pieces). */
  maxWrite = MAX_WRITE;

  constructor(readonly reg: Registry) {}

  addSection(name: string, lookup: (rest: string[]) => Node | undefined): void {
    this.extras.set(name, lookup);
  }

  lookup(path: string): Node | undefined {
    const parts = path.split('/').filter(Boolean);
    if (parts.length === 0) return { kind: 'dir', list: () => [CONTROL_DIR, ...this.reg.names()] };
    const [first, ...rest] = parts;
    if (first === CONTROL_DIR) return this.control(rest);
    if (rest.length > 0 || !this.reg.has(first!)) return undefined;
    return this.diskNode(first!);
  }

  private control(rest: string[]): Node | undefined {
    const [name, ...more] = rest;
    if (name === undefined) {
      return { kind: 'dir', list: () => ['ctl', 'status', 'status.json', 'history', 'snapshots', ...this.extras.keys()] };
    }
    if (more.length === 0) {
      if (name === 'ctl') return this.ctlNode();
      if (name === 'status') return this.rendered(() => renderStatus(storeStatus(this.reg)));
      if (name === 'status.json') return this.rendered(() => JSON.stringify(storeStatus(this.reg), null, 2) + '\n');
      if (name === 'history') {
        return this.rendered(async () => (await this.reg.history()).map((h) => `${h.time}\t${h.result}\t${h.command}${h.message ? `\t${h.message}` : ''}`).join('\n') + '\n');
      }
    }
    if (name === 'snapshots') return this.snapshots(more);
    const extra = name !== undefined ? this.extras.get(name) : undefined;
    return extra?.(more);
  }

  private snapshots(rest: string[]): Node | undefined {
    if (rest.length === 0) return { kind: 'dir', list: () => this.reg.names() };
    if (!this.reg.has(rest[0]!)) return undefined;
    const disk = this.reg.diskView(rest[0]!);
    if (rest.length === 1) return { kind: 'dir', list: () => disk.snapshotNames() };
    if (rest.length > 2) return undefined;
    if (!disk.snapshotNames().includes(rest[1]!)) return undefined;
    const v = this.reg.snapshotView(rest[0]!, rest[1]!);
    const created = new Date(v.snapshot()!.created);
    const refuse = () => Promise.reject(readOnly('snapshots are read-only'));
    return {
      kind: 'file',
      stat: () => ({ mode: RO, size: v.size(), blocks: v.heldBytes() / 512, blksize: v.blockSize, mtime: created }),
      open: async (write) => {
        if (write) throw readOnly('snapshots are read-only');
        const unpin = v.pin();
        return {
          read: (dst, pos) => v.read(dst, pos),
          seek: (pos, what) => v.seek(pos, what),
          readOnly: true,
          write: refuse,
          truncate: refuse,
          release: async () => unpin(),
        };
      },
      truncate: refuse,
    };
  }

  private diskNode(name: string): Node {
    const disk = this.reg.diskView(name);
    return {
      kind: 'file',
      stat: () => ({ mode: RW, size: disk.size(), blocks: disk.heldBytes() / 512, blksize: disk.blockSize, mtime: new Date(disk.mtime) }),
      open: async () => {
        const unpin = disk.pin();
        return {
          read: (dst, pos) => disk.read(dst, pos),
          write: (src, pos, later) => disk.write(src, pos, later),
          seek: (pos, what) => disk.seek(pos, what),
          discard: async (pos, length, keepSize) => {
            if (!keepSize && pos + length > disk.size()) throw invalid(`disk ${name} cannot grow by fallocate; use 'resize ${name} <size>' in the control file`);
            await disk.discard(pos, length);
          },
          truncate: (size) => this.truncateDisk(name, size),
          fsync: () => disk.flush(),
          release: async () => unpin(),
        };
      },
      truncate: (size) => this.truncateDisk(name, size),
    };
  }

  /** A disk's size changes only by `resize`; truncating to the current size (O_TRUNC on open) is a no-op. */
  private async truncateDisk(name: string, size: number): Promise<void> {
    if (size === this.reg.diskView(name).size()) return;
    throw invalid(`disk ${name} cannot be truncated; use 'resize ${name} <size>' in the control file`);
  }

  /**
   * The control file. Each open file remembers the reply to the last command written through it
   * (control/reply.ts): a client that opens it read-write reads, at offset 0, why its write failed (or
   * what it did), instead of guessing from the shared history. Opened with direct_io, so reads reach us
   * although st_size is 0.
   */
  private ctlNode(): Node {
    return {
      kind: 'file',
      stat: () => ({ mode: RW, size: 0, blocks: 0, mtime: this.started }),
      open: async () => {
        // The kernel splits a write(2) larger than max_write into pieces of exactly max_write bytes: a
        // line cut at such a boundary waits for the next piece instead of running in two halves.
        let carry = '';
        let reply: Buffer = Buffer.alloc(0);
        const replying = async (work: () => Promise<void>): Promise<void> => {
          try {
            await work();
          } catch (e) {
            reply = errorReply(e);
            throw e;
          }
        };
        const run = async (text: string): Promise<void> => {
          if (text.split('\n').some((l) => l.length > MAX_LINE)) throw invalid('command line too long');
          const lines = text.split('\n').map((l) => l.trim()).filter((l) => l.length > 0);
          for (const line of lines) reply = okReply(await runLine(this.reg, line));
        };
        return {
          directIO: true,
          read: async (dst, pos) => readReply(reply, dst, pos),
          // The command runs inside write(): a failure is this write's errno, so `echo … > ctl` fails.
          write: (src) =>
            replying(async () => {
              if (src.includes(0)) throw invalid('command contains NUL bytes');
              let text = carry + src.toString('utf8');
              carry = '';
              if (src.length === this.maxWrite && !text.endsWith('\n')) {
                const cut = text.lastIndexOf('\n');
                carry = text.slice(cut + 1);
                text = text.slice(0, cut + 1);
                if (carry.length > MAX_LINE) throw invalid('command line too long');
              }
              if (text.trim().length === 0 && carry.length === 0) throw invalid('empty command');
              await run(text);
            }).then(() => src.length),
          // A piece left over when the writer closes runs now; its error is close's error.
          flush: () =>
            replying(async () => {
              const rest = carry;
              carry = '';
              if (rest.trim()) await run(rest);
            }),
          truncate: async () => undefined,
        };
      },
      truncate: async () => undefined,
    };
  }

  /**
   * Rendered files (status, status.json, history) are rendered anew at every stat and every open, so a
   * reader always sees the state after every command that finished before its open. st_size is the real
   * length of a fresh rendering; an open descriptor reads its own rendering and its fstat reports that
   * rendering's length, so `tail`, `wc -c` and `less` (which seek from st_size) see one consistent file.
   * Opened with direct_io: the kernel keeps no page of one rendering for the next reader, and does not cut
   * a read at a size learned from another stat.
   */
  private rendered(render: () => string | Promise<string>): Node {
    const fresh = async (): Promise<Buffer> => Buffer.from(await render());
    return {
      kind: 'file',
      stat: async () => ({ mode: RO, size: (await fresh()).length, blocks: 0, mtime: new Date(this.reg.changeTime()) }),
      open: async (write) => {
        if (write) throw readOnly('this file is read-only');
        const buf = await fresh();
        return {
          directIO: true,
          size: () => buf.length,
          read: async (dst, pos) => (pos >= buf.length ? 0 : buf.copy(dst, 0, pos, Math.min(buf.length, pos + dst.length))),
        };
      },
    };
  }
}

export const MODES = { DIR, RW, RO };
