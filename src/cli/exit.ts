/** The one place typed errors become exit codes and messages on stderr. */
import { errorCode, errorMessage } from '../errors.js';

const CODES: Record<string, number> = { INVALID: 2, NOT_FOUND: 3, EXISTS: 4, BUSY: 5, LOCKED: 5, NO_SPACE: 6, CORRUPT: 7, READ_ONLY: 8 };

export function exitCodeOf(e: unknown): number {
  const code = errorCode(e);
  return (code ? CODES[code] : undefined) ?? 1;
}

export function die(e: unknown): never {
  process.stderr.write(`vdiskfs: ${errorMessage(e)}\n`);
  process.exit(exitCodeOf(e));
}
