/**
 * `verify IMAGE --against DISK@SNAP`: the comparison of image/compare.ts, against a store opened directly
 * (its views) or, when the store is mounted, against the mount's files: the snapshot file for content,
 * status.json for the snapshots' sizes and ids, and the mount's own images of the snapshot for where its
 * data is (the tables of copies/<disk>/<snap>) and what may have changed since a base (the tables of
 * deltas/<disk>/<base>..<snap>); only headers and tables of those are read.
 */
import { open, readFile, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { compareImage, storeSide, type Comparison, type SnapshotSide } from '../image/compare.js';
import { inspectImage, type ImageSource } from '../image/index.js';
import { fileChunks } from '../image/fileSource.js';
import type { StoreStatus } from '../control/status.js';
import { notFound } from '../errors.js';
import { query } from './offline.js';

export async function compareAgainst(dir: string, disk: string, snap: string, image: () => ImageSource): Promise<Comparison> {
  return query(dir, (reg) => compareImage(image(), storeSide(reg, disk, snap)), async (vdisk) => {
    const side = await mountSide(vdisk, disk, snap);
    try {
      return await compareImage(image(), side);
    } finally {
      await side.close();
    }
  });
}

/**
 * The snapshot files are opened once and held for the whole comparison (an open snapshot file also keeps the
 * daemon from deleting the snapshot meanwhile); close() lets them go.
 */
async function mountSide(vdisk: string, disk: string, snap: string): Promise<SnapshotSide & { close(): Promise<void> }> {
  const st = JSON.parse(await readFile(join(vdisk, 'status.json'), 'utf8')) as StoreStatus;
  const d = st.disks.find((x) => x.name === disk);
  if (!d) throw notFound(`disk ${disk}`);
  const s = d.snapshots.find((x) => x.name === snap);
  if (!s) throw notFound(`snapshot ${disk}@${snap}`);
  const files = { target: join(vdisk, 'snapshots', disk, snap), base: '' };
  const handles = new Map<string, Promise<FileHandle>>();
  const readAt = async (file: string, dst: Buffer, pos: number): Promise<number> => {
    let fh = handles.get(file);
    if (!fh) handles.set(file, (fh = open(file, 'r')));
    const h = await fh;
    let done = 0;
    while (done < dst.length) {
      const { bytesRead } = await h.read(dst, done, dst.length - done, pos + done);
      if (bytesRead === 0) break;
      done += bytesRead;
    }
    return done;
  };
  const tables = async (file: string): Promise<number[]> => {
    const ins = await inspectImage(fileChunks(file, { chunkBytes: 1 << 20, ahead: 1 }));
    return [...ins.slots.map((x) => x.lbn), ...ins.zeros];
  };
  return {
    target: { size: s.size, blockSize: d.blockSize, uid: s.id, name: `${disk}@${snap}` },
    read: (dst, pos, base) => readAt(base ? files.base : files.target, dst, pos),
    dataBlocks: () => tables(join(vdisk, 'copies', disk, snap)),
    changedSince: async (uid) => {
      const b = d.snapshots.find((x) => x.id === uid);
      if (!b) throw notFound(`base snapshot ${uid} of the image in disk ${disk} (deleted, or the image is of another disk)`);
      files.base = join(vdisk, 'snapshots', disk, b.name);
      return tables(join(vdisk, 'deltas', disk, `${b.name}..${snap}`));
    },
    close: async () => {
      await Promise.allSettled([...handles.values()].map(async (fh) => (await fh).close()));
    },
  };
}
