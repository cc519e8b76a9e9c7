/**
 * `repair <disk> <file>...`: put back damaged blocks of a disk from copies elsewhere. A file is a vdiskfs
 * image (full, or a chain given in order: read as the disk its last image describes, seekable.ts) or a raw
 * copy of the disk (a standby's disk file through its mount, a snapshot file, a `dd` of the disk). Whatever
 * the file, a block is rewritten only with bytes whose checksums equal the ones the store has for it
 * (disk/scrub.ts repairDisk): a copy of another time or another disk can never put wrong bytes in.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { isAbsolute } from 'node:path';
import type { Registry } from '../disk/registry.js';
import type { RepairSource } from '../disk/scrub.js';
import { ImageChain } from '../image/seekable.js';
import { MAGIC } from '../image/header.js';
import { invalid } from '../errors.js';

/** One source: the image chain if `paths` are images, else the raw file `paths[0]`. */
async function openSource(paths: string[]): Promise<{ read: RepairSource; close: () => Promise<unknown> }> {
  const fh: FileHandle = await open(paths[0]!, 'r');
  const head = Buffer.alloc(MAGIC.length);
  await fh.read(head, 0, head.length, 0);
  if (head.equals(MAGIC)) {
    await fh.close();
    const chain = await ImageChain.open(paths);
    return {
      read: async (offset, dst) => {
        if (offset + dst.length > chain.virtualSize) return false;
        await chain.read(dst, offset);
        return true;
      },
      close: () => chain.close(),
    };
  }
  if (paths.length > 1) {
    await fh.close();
    throw invalid(`${paths[0]} is not a vdiskfs image: give raw copies one at a time`);
  }
  return {
    read: async (offset, dst) => (await fh.read(dst, 0, dst.length, offset)).bytesRead === dst.length,
    close: () => fh.close(),
  };
}

export async function repairFrom(reg: Registry, disk: string, files: string[]): Promise<string> {
  for (const f of files) if (!isAbsolute(f)) throw invalid(`repair: ${f} is not an absolute path`);
  reg.disk(disk); // NOT_FOUND before any file is opened
  const src = await openSource(files);
  try {
    const r = await reg.repair(disk, [src.read]);
    const left = r.damaged.filter((d) => !r.repaired.includes(d));
    const list = (xs: typeof r.damaged): string => xs.slice(0, 10).map((d) => `${d.view} byte ${d.offset}`).join(', ') + (xs.length > 10 ? ', …' : '');
    if (!r.damaged.length) return `repair ${disk}: no damaged block`;
    return `repair ${disk}: ${r.repaired.length} of ${r.damaged.length} damaged block(s) repaired${r.repaired.length ? ` (${list(r.repaired)})` : ''}${left.length ? `; ${left.length} still damaged, not in ${files.join(' ')} as they were (${list(left)})` : ''}`;
  } finally {
    await src.close();
  }
}
