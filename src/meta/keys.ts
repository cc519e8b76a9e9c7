/**
 * Key layout of the LevelDB store (see KEYSPACE.md beside this file). Keys are UTF-8 strings whose numeric
 * parts are fixed-width lowercase hex, so LevelDB's byte order equals numeric order and a range of logical
 * blocks is one contiguous key range. Values are UTF-8 strings, except block data (`b!`), which is binary.
 * Pure functions only.
 */
export const FORMAT_KEY = 'meta!format';
export const SEQ_KEY = 'meta!seq';
/** Written with sync:true to make everything before it durable. */
export const SYNC_KEY = 'meta!sync';
/**
 * meta!pool!<blockSize:8>: the length of that pool file known to be synced (a decimal string), written after
 * an fsync's pool flush, lowered before a close truncates the file. `check` counts referenced blocks past the
 * file's end but below it as lost (an error); past it, as data a power cut took before its sync (a warning).
 */
export const POOL_SYNCED_PREFIX = 'meta!pool!';
export const poolSyncedKey = (blockSize: number): string => `${POOL_SYNCED_PREFIX}${hex(blockSize, 8)}`;
export const STORE_MAGIC = 'vdiskfs-store';
/**
 * Format versions (KEYSPACE.md, Changelog): 1 keeps block data in pool files; 2 keeps it in LevelDB (`b!`
 * keys), so that a vdiskfs that knows only version 1 refuses it instead of reading every block as zeros.
 * 3 (`file`) and 4 (`leveldb`) may hold a disk record with `reverting` (a rollback still moving entries
 * back), which an older vdiskfs would misread. 5 (`file`) and 6 (`leveldb`) may hold data entries with
 * checksums (`;gen;sums`), which an older vdiskfs cannot decode. 7: `rados` stores. 8 (`file`), 9
 * (`leveldb`) and 10 (`rados`): meta!gen may hold write intents and demoted regions (disk/sums.ts), which an
 * older vdiskfs would ignore and so trust checksums a crash left stale. Older versions are read and upgraded
 * at open (their entries stay valid: unverified until sealed, or as trusted as they were).
 */
export const STORE_VERSION = 8;
export const STORE_VERSION_LEVELDB = 9;
/** `rados` stores (block data as objects in a Ceph pool; `rados` in meta!format says where). */
export const STORE_VERSION_RADOS = 10;
/** Older versions this vdiskfs opens, and what each is upgraded to. */
export const STORE_UPGRADES: ReadonlyMap<number, number> = new Map([
  [1, STORE_VERSION],
  [3, STORE_VERSION],
  [5, STORE_VERSION],
  [2, STORE_VERSION_LEVELDB],
  [4, STORE_VERSION_LEVELDB],
  [6, STORE_VERSION_LEVELDB],
  [7, STORE_VERSION_RADOS],
]);
/**
 * meta!gen: JSON {session, settled, unsettled, closed?, intents?, demoted?}: the checksum generations
 * (disk/sums.ts GenRecord). `session` counts opens; `settled` is the newest generation whose data and
 * checksums an fsync made durable; `unsettled` lists [from, to] ranges of generations a crash left unsettled
 * (their checksums are not trusted); `intents`, `demoted`: writes in place (sums.ts).
 */
export const GEN_KEY = 'meta!gen';

const hex = (n: number, width: number): string => n.toString(16).padStart(width, '0');

export const diskKey = (name: string): string => `disk!${name}`;
export const DISK_PREFIX = 'disk!';

/** Live allocation tables (one per disk): t!<diskId:8>!<lbn:12>. */
export const LIVE_TABLES = 't!';
/** Snapshot tables (the blocks a snapshot preserved): s!<snapId:8>!<lbn:12>. */
export const SNAP_TABLES = 's!';
export const livePrefix = (diskId: number): string => `${LIVE_TABLES}${hex(diskId, 8)}!`;
export const snapPrefix = (snapId: number): string => `${SNAP_TABLES}${hex(snapId, 8)}!`;
/** The key of block lbn in the table with this prefix (livePrefix, snapPrefix). */
export const tableKey = (prefix: string, lbn: number): string => prefix + hex(lbn, 12);
export const HISTORY_PREFIX = 'h!';
export const historyKey = (seq: number): string => `${HISTORY_PREFIX}${hex(seq, 12)}`;

/**
 * Block data of the LevelDB bottom (LevelBlockStore): b!<blockSize:8>!<pbn:12>, value the block's bytes.
 * The block size is in the key because pbns are numbered per block size, like the pool files.
 */
export const BLOCK_PREFIX = 'b!';
export const blockKey = (blockSize: number, pbn: number): string => `${BLOCK_PREFIX}${hex(blockSize, 8)}!${hex(pbn, 12)}`;

/** The block size and pbn of a block key, or undefined if the key is not one. */
export function parseBlockKey(key: string): { blockSize: number; pbn: number } | undefined {
  const m = /^b!([0-9a-f]{8})!([0-9a-f]{12})$/.exec(key);
  return m ? { blockSize: parseInt(m[1]!, 16), pbn: parseInt(m[2]!, 16) } : undefined;
}

export function lbnOfKey(key: string): number {
  return parseInt(key.slice(key.length - 12), 16);
}
export function idOfTableKey(key: string): number {
  return parseInt(key.slice(2, 10), 16);
}

/** Upper bound for a prefix range (prefix + a character above any used). */
export const prefixEnd = (prefix: string): string => prefix + '~';

/**
 * A table entry. Live entries carry the epoch they were written in (for copy-on-write decisions);
 * snapshot entries do not. `zero`: reads as zeros; `inherit`: reads through to the disk's backing
 * snapshot (clones), or zeros when there is none.
 */
export type Entry =
  | DataEntry
  | { kind: 'zero'; epoch: number }
  | { kind: 'inherit'; epoch: number };

/**
 * A data entry. `sums` (versions 5/6): the CRC-32 of each 4 KiB sector of the block, base64 of little-endian
 * 32-bit values, and `gen`, the generation they were written in (disk/sums.ts says when they are trusted).
 * Without them the block is unverified (written in place since its last seal, or from an older store).
 */
export interface DataEntry {
  kind: 'data';
  pbn: number;
  epoch: number;
  sums?: string;
  gen?: number;
}

export function encodeEntry(e: Entry, withEpoch: boolean): string {
  const head = e.kind === 'data' ? String(e.pbn) : e.kind === 'zero' ? 'Z' : 'I';
  const v = withEpoch ? `${head}:${e.epoch}` : head;
  return e.kind === 'data' && e.sums !== undefined ? `${v};${e.gen ?? 0};${e.sums}` : v;
}

export function decodeEntry(v: string): Entry {
  const semi = v.indexOf(';');
  const main = semi < 0 ? v : v.slice(0, semi);
  const colon = main.indexOf(':');
  const head = colon < 0 ? main : main.slice(0, colon);
  const epoch = colon < 0 ? 0 : Number(main.slice(colon + 1));
  if (head === 'Z' && semi < 0) return { kind: 'zero', epoch };
  if (head === 'I' && semi < 0) return { kind: 'inherit', epoch };
  const pbn = Number(head);
  if (!Number.isSafeInteger(pbn) || pbn < 0 || !Number.isSafeInteger(epoch)) throw new Error(`bad table entry '${v}'`);
  if (semi < 0) return { kind: 'data', pbn, epoch };
  const semi2 = v.indexOf(';', semi + 1);
  const gen = Number(v.slice(semi + 1, semi2));
  const sums = v.slice(semi2 + 1);
  if (semi2 < 0 || !Number.isSafeInteger(gen) || gen < 0 || !/^[A-Za-z0-9+/]+=*$/.test(sums)) throw new Error(`bad table entry '${v}'`);
  return { kind: 'data', pbn, epoch, sums, gen };
}

/** The same block without its checksums (unverified): written in place, to be sealed again (disk/sums.ts). */
export function unsealed(e: DataEntry): DataEntry {
  return { kind: 'data', pbn: e.pbn, epoch: e.epoch };
}
