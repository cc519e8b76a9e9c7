/**
 * Commands and restores through a mounted store's files. The CLI opens `.vdisk/ctl` (or a restore file)
 * read-write, writes, and reads the same open file back at offset 0: the daemon answers there with the
 * typed result of what this open file carried (control/reply.ts), so the reason and code are the ones the
 * same command gives offline. A daemon older than replies answers nothing: then the errno is all there is.
 */
import { open, readFile, type FileHandle } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { readMountInfo } from '../meta/db.js';
import { mountDevice } from '../util/mountinfo.js';
import { parseReply, replyError, type Reply } from '../control/reply.js';
import type { RestoreResult } from '../restore/restore.js';
import { errorFromErrno } from './exit.js';
import type { ErrorCode } from '../errors.js';

/** The mount's `.vdisk` directory when a live daemon serves the store (without opening the store). */
export async function mountedVdisk(dir: string): Promise<string | undefined> {
  const info = await readMountInfo(dir);
  if (!info) return undefined;
  try {
    process.kill(info.pid, 0);
  } catch {
    return undefined; // a stale file left by a killed daemon
  }
  const mounts = await readFile('/proc/self/mountinfo', 'utf8').catch(() => '');
  return mountDevice(mounts, info.mountpoint) !== undefined ? join(info.mountpoint, '.vdisk') : undefined;
}

async function readBack(fh: FileHandle): Promise<Reply | undefined> {
  const parts: Buffer[] = [];
  for (let pos = 0; pos < 1024 * 1024;) {
    const buf = Buffer.alloc(64 * 1024);
    const { bytesRead } = await fh.read(buf, 0, buf.length, pos);
    if (bytesRead === 0) break;
    parts.push(buf.subarray(0, bytesRead));
    pos += bytesRead;
    if (buf.subarray(0, bytesRead).includes(10)) break;
  }
  return parseReply(Buffer.concat(parts).toString('utf8'));
}

const errnoOf = (e: unknown): string | undefined => (e as NodeJS.ErrnoException).code;

/** Only errors of the calls into the mount are the mount's answer; anything else is rethrown as is. */
function fromMount(e: unknown, what: string, otherwise: ErrorCode): Error {
  const code = errnoOf(e) ?? 'EIO';
  return errorFromErrno(code, `${what} failed with ${code} (the mount gave no reason: an older daemon; see .vdisk/history)`, otherwise);
}

/** Run one control line through the mount's control file; its message, or its typed error. */
export async function controlThroughMount(vdisk: string, line: string): Promise<string> {
  const fh = await open(join(vdisk, 'ctl'), 'r+');
  try {
    let failed: unknown;
    await fh.write(line + '\n').catch((e: unknown) => (failed = e));
    const reply = await readBack(fh).catch(() => undefined);
    if (reply && !reply.ok) throw replyError(reply);
    if (failed !== undefined) throw fromMount(failed, `'${line}' through the mount`, 'IO');
    return reply?.message ?? `done through the mount at ${join(vdisk, '..')}`;
  } finally {
    await fh.close().catch(() => undefined);
  }
}

/**
 * Write an image into `.vdisk/import/<disk>` or `.vdisk/restore/<disk>`, chunk by chunk at increasing
 * offsets; the read back commits it and answers with the restore's result (undefined from an older daemon,
 * whose close then commits it).
 */
export async function restoreThroughMount(file: string, chunks: AsyncIterable<Buffer>, missing: () => Error): Promise<RestoreResult | undefined> {
  // The file is refused at open only when it does not exist (no such disk), or a restore to it is running.
  const fh = await open(file, 'r+').catch((e: unknown) => {
    throw errnoOf(e) === 'ENOENT' ? missing() : errnoOf(e) === 'EBUSY' ? errorFromErrno('EBUSY', `a restore to ${basename(file)} is already in progress`) : e;
  });
  let closed = false;
  try {
    let failed: unknown;
    let pos = 0;
    try {
      for await (const c of chunks) {
        for (let done = 0; done < c.length;) done += (await fh.write(c, done, c.length - done, pos + done)).bytesWritten;
        pos += c.length;
      }
    } catch (e) {
      if (errnoOf(e) === undefined || (e as NodeJS.ErrnoException).syscall !== 'write') throw e; // the source failed
      failed = e;
    }
    const reply = await readBack(fh).catch(() => undefined);
    if (reply) {
      if (!reply.ok) throw replyError(reply);
      return reply.result as RestoreResult;
    }
    if (failed !== undefined) throw fromMount(failed, 'restore through the mount', 'CORRUPT');
    closed = true;
    await fh.close().catch((e: unknown) => {
      throw fromMount(e, 'restore through the mount', 'CORRUPT');
    });
    return undefined;
  } finally {
    if (!closed) await fh.close().catch(() => undefined);
  }
}
