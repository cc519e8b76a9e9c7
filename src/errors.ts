/**
 * Typed errors with stable string codes. The core throws only these; the FUSE edge maps codes to errno
 * (fuse/errno.ts) and the CLI maps them to exit codes (cli/exit.ts). Messages may change, codes never.
 */
export const ERROR_CODES = ['NOT_FOUND', 'EXISTS', 'NO_SPACE', 'READ_ONLY', 'CORRUPT', 'BUSY', 'INVALID', 'LOCKED', 'IO'] as const;
export type ErrorCode = (typeof ERROR_CODES)[number];

export class VdiskError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = 'VdiskError';
  }
}

export const notFound = (what: string): VdiskError => new VdiskError('NOT_FOUND', `${what} not found`);
export const exists = (what: string): VdiskError => new VdiskError('EXISTS', `${what} already exists`);
export const invalid = (msg: string): VdiskError => new VdiskError('INVALID', msg);
export const busy = (msg: string): VdiskError => new VdiskError('BUSY', msg);
export const readOnly = (msg: string): VdiskError => new VdiskError('READ_ONLY', msg);
export const noSpace = (msg: string): VdiskError => new VdiskError('NO_SPACE', msg);
export const corrupt = (msg: string): VdiskError => new VdiskError('CORRUPT', msg);

export function isVdiskError(e: unknown, code?: ErrorCode): e is VdiskError {
  return e instanceof VdiskError && (code === undefined || e.code === code);
}

/** Any error with a string `code` (VdiskError, ImageError, …) is reported by that code. */
export function errorCode(e: unknown): string | undefined {
  if (e && typeof e === 'object' && 'code' in e && typeof (e as { code: unknown }).code === 'string') {
    return (e as { code: string }).code;
  }
  return undefined;
}

export function errorMessage(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
