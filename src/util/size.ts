/** Parsing and printing of byte sizes: K, M, G, T, P suffixes are powers of 1024. */
import { invalid } from '../errors.js';

const UNITS: Record<string, number> = { '': 1, B: 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3, T: 1024 ** 4, P: 1024 ** 5 };

export function parseSize(text: string): number {
  const m = /^\s*(\d+)(?:\.(\d+))?\s*([KMGTP]?)(?:i?B)?\s*$/i.exec(text);
  if (!m) throw invalid(`bad size '${text}' (expected a number with an optional K, M, G, T suffix)`);
  const unit = UNITS[(m[3] ?? '').toUpperCase()] ?? 1;
  const whole = Number(m[1]);
  const frac = m[2] ? Number(`0.${m[2]}`) : 0;
  const bytes = whole * unit + Math.round(frac * unit);
  if (!Number.isSafeInteger(bytes) || !Number.isSafeInteger(whole)) throw invalid(`size '${text}' is too large`);
  if (m[2] && !Number.isInteger(frac * unit)) throw invalid(`size '${text}' is not a whole number of bytes`);
  return bytes;
}

/** A readahead setting (--readahead, -o readahead=): 0 (the kernel's default) or whole KiB up to 256M. */
export function parseReadahead(text: string): number {
  const bytes = parseSize(text);
  if (bytes % 1024 !== 0 || bytes > 256 * 1024 ** 2) throw invalid(`readahead '${text}' must be 0 or a whole number of KiB up to 256M`);
  return bytes;
}

/** The table cache's budget (meta/table.ts EntryCache): from 1 MiB to 64 GiB. */
export function parseTableCache(text: string): number {
  const bytes = parseSize(text);
  if (!(bytes >= 1024 ** 2 && bytes <= 64 * 1024 ** 3)) throw invalid(`table cache '${text}' must be from 1M to 64G`);
  return bytes;
}

export function formatSize(bytes: number): string {
  const names = ['B', 'K', 'M', 'G', 'T', 'P'];
  let v = bytes;
  let i = 0;
  while (v >= 1024 && i < names.length - 1) {
    v /= 1024;
    i++;
  }
  const s = i === 0 ? String(v) : v >= 100 || Number.isInteger(v) ? v.toFixed(0) : v.toFixed(1);
  return `${s}${names[i]}`;
}

export const MIN_BLOCK_SIZE = 4096;
export const MAX_BLOCK_SIZE = 1024 * 1024;
export const DEFAULT_BLOCK_SIZE = 64 * 1024;
/** 2^53 would break the arithmetic; cap virtual sizes at 8 PiB, well beyond the 16 TiB required. */
export const MAX_VIRTUAL_SIZE = 8 * 1024 ** 5;

export function checkBlockSize(bs: number): void {
  if (!Number.isInteger(bs) || bs < MIN_BLOCK_SIZE || bs > MAX_BLOCK_SIZE || (bs & (bs - 1)) !== 0) {
    throw invalid(`block size ${bs} must be a power of two from 4K to 1M`);
  }
}

export function checkVirtualSize(size: number, blockSize: number): void {
  if (!Number.isSafeInteger(size) || size <= 0) throw invalid(`disk size must be a positive number of bytes`);
  if (size > MAX_VIRTUAL_SIZE) throw invalid(`disk size ${formatSize(size)} exceeds the maximum of 8P`);
  if (size % 512 !== 0) throw invalid(`disk size must be a multiple of 512 bytes`);
  void blockSize;
}
