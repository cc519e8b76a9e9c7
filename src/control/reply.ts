/**
 * The reply a client reads back from the file it wrote a command or an image to (`.vdisk/ctl`,
 * `.vdisk/import/<disk>`, `.vdisk/restore/<disk>`): one JSON line with the result of the last command
 * written through that open file, or the typed error that refused it. It belongs to the open file, so
 * clients never see each other's results; the errno of the failed write stays what `echo` and `dd` see.
 *   {"ok":true,"message":"created a"}                                  a control command
 *   {"ok":true,"message":"…","result":{"disk":"x","kind":"full",…}}     a restore (RestoreResult)
 *   {"ok":false,"code":"EXISTS","message":"disk a already exists"}      any refusal (codes: errors.ts)
 */
import { ERROR_CODES, errorCode, errorMessage, VdiskError, type ErrorCode } from '../errors.js';

export interface Reply {
  ok: boolean;
  message: string;
  code?: string;
  result?: unknown;
}

export function okReply(message: string, result?: unknown): Buffer {
  return Buffer.from(JSON.stringify({ ok: true, message, ...(result !== undefined ? { result } : {}) } satisfies Reply) + '\n');
}

export function errorReply(e: unknown): Buffer {
  return Buffer.from(JSON.stringify({ ok: false, code: errorCode(e) ?? 'IO', message: errorMessage(e) } satisfies Reply) + '\n');
}

/** A reply as the client reads it: undefined when there is none (a daemon that predates replies). */
export function parseReply(text: string): Reply | undefined {
  const line = text.split('\n')[0]?.trim();
  if (!line) return undefined;
  try {
    const r = JSON.parse(line) as Reply;
    return typeof r === 'object' && r !== null && typeof r.ok === 'boolean' && typeof r.message === 'string' ? r : undefined;
  } catch {
    return undefined;
  }
}

const CODES = new Set<string>(ERROR_CODES);

/** The typed error a refusal reply carries (an unknown code from a newer daemon stands as IO). */
export function replyError(r: Reply): VdiskError {
  return new VdiskError(CODES.has(r.code ?? '') ? (r.code as ErrorCode) : 'IO', r.message);
}

/** Serve a reply buffer to read(2) at `pos` (clients read it with pread at offset 0). */
export function readReply(reply: Buffer, dst: Buffer, pos: number): number {
  return pos >= reply.length ? 0 : reply.copy(dst, 0, pos, Math.min(reply.length, pos + dst.length));
}
