/**
 * The one place typed errors become exit codes and messages on stderr. The same error gives the same code
 * and words offline and through the mount (the mount's reply carries the typed error: control/reply.ts).
 *   0 done · 1 other failure (I/O, a mount that failed) · 2 usage error or invalid argument/input · 3 not found
 *   4 already exists · 5 busy or the store is in use · 6 pool full · 7 corrupt image · 8 read-only
 * `vdiskfs check` has its own codes (CHECK_EXIT), as qemu-img check's.
 */
import type { CommanderError } from 'commander';
import { errorCode, errorMessage, VdiskError, type ErrorCode } from '../errors.js';

const CODES: Record<string, number> = { INVALID: 2, NOT_FOUND: 3, EXISTS: 4, BUSY: 5, LOCKED: 5, NO_SPACE: 6, CORRUPT: 7, READ_ONLY: 8 };

/** A command line commander refused (unknown command or option, missing or bad argument). */
export const USAGE_EXIT = 2;

/** `vdiskfs check`'s own exit codes, as qemu-img check's. */
export const CHECK_EXIT = { CLEAN: 0, NOT_COMPLETED: 1, ERRORS: 2, LEAKS: 3 } as const;

export function exitCodeOf(e: unknown): number {
  const code = errorCode(e);
  return (code ? CODES[code] : undefined) ?? 1;
}

/** A vdiskfs child process's failure, typed again from its exit code (replicate runs backup and restore as children). */
export function errorFromExit(exit: number, message: string): VdiskError {
  const code = (Object.keys(CODES) as ErrorCode[]).find((c) => CODES[c] === exit && c !== 'LOCKED');
  return new VdiskError(code ?? 'IO', message);
}

export function die(e: unknown): never {
  process.stderr.write(`vdiskfs: ${errorMessage(e)}\n`);
  process.exit(exitCodeOf(e));
}

/** commander printed its message already (with a suggestion for a mistyped command): exit with the code. */
export function commanderExit(e: CommanderError): never {
  process.exit(e.exitCode === 0 ? 0 : USAGE_EXIT);
}

/**
 * An errno from a call into a mount whose daemon gave no reply (one older than replies), as the typed
 * error the daemon raised: the inverse of src/fuse/errno.ts. EIO stands for more than one (IO, CORRUPT):
 * `otherwise` says which the caller means, and is taken for any errno not listed.
 */
const FROM_ERRNO: Record<string, ErrorCode> = { EINVAL: 'INVALID', ENOENT: 'NOT_FOUND', EEXIST: 'EXISTS', EBUSY: 'BUSY', ENOSPC: 'NO_SPACE', EROFS: 'READ_ONLY' };

export function errorFromErrno(errno: string | undefined, message: string, otherwise: ErrorCode = 'IO'): VdiskError {
  return new VdiskError((errno !== undefined ? FROM_ERRNO[errno] : undefined) ?? otherwise, message);
}
