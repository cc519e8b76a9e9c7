/** The one place typed errors become errno values (negative, as the FUSE binding expects). */
import { errorCode } from '../errors.js';

export const E = {
  EPERM: -1,
  ENOENT: -2,
  ENXIO: -6,
  EIO: -5,
  EBADF: -9,
  EACCES: -13,
  EBUSY: -16,
  EEXIST: -17,
  EISDIR: -21,
  EINVAL: -22,
  EFBIG: -27,
  ENOSPC: -28,
  EROFS: -30,
  ENOTDIR: -20,
  ENOTEMPTY: -39,
  ENOTSUP: -95,
  EOPNOTSUPP: -95,
  /** What the kernel itself answers once a FUSE connection is gone; the daemon answers it while stopping. */
  ENOTCONN: -107,
} as const;

const BY_CODE: Record<string, number> = {
  NOT_FOUND: E.ENOENT,
  EXISTS: E.EEXIST,
  NO_SPACE: E.ENOSPC,
  READ_ONLY: E.EROFS,
  CORRUPT: E.EIO,
  BUSY: E.EBUSY,
  INVALID: E.EINVAL,
  LOCKED: E.EBUSY,
  IO: E.EIO,
};

export function toErrno(e: unknown): number {
  const code = errorCode(e);
  return (code ? BY_CODE[code] : undefined) ?? E.EIO;
}
