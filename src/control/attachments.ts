/**
 * Images attached as read-only disks (`attach <name> <image> [<delta>...]`, `detach <name>`): a chain of a
 * full image and its deltas (image/seekable.ts) shown at `.vdisk/attached/<name>`, read through the images'
 * tables without restoring anything. Kept per mounted store, in memory only: attachments end at unmount.
 * Image paths must be absolute (the daemon's working directory is not the caller's).
 */
import { isAbsolute } from 'node:path';
import type { Registry } from '../disk/registry.js';
import { ImageChain } from '../image/seekable.js';
import { busy, exists, invalid, notFound } from '../errors.js';
import { checkName } from '../disk/names.js';

export interface Attached {
  name: string;
  paths: string[];
  chain: ImageChain;
  attachedAt: Date;
  /** Open file handles on it: detach waits for none. */
  opens: number;
}

export class Attachments {
  private map = new Map<string, Attached>();

  async attach(name: string, paths: string[]): Promise<Attached> {
    checkName(name);
    if (paths.length === 0) throw invalid('usage: attach <name> <image> [<delta>...]');
    for (const p of paths) if (!isAbsolute(p)) throw invalid(`image path '${p}' must be absolute (the mount does not share your working directory)`);
    if (this.map.has(name)) throw exists(`attached image ${name}`);
    const chain = await ImageChain.open(paths);
    if (this.map.has(name)) {
      await chain.close(); // attached meanwhile by another command
      throw exists(`attached image ${name}`);
    }
    const a: Attached = { name, paths, chain, attachedAt: new Date(), opens: 0 };
    this.map.set(name, a);
    return a;
  }

  async detach(name: string): Promise<void> {
    const a = this.get(name);
    if (a.opens > 0) throw busy(`attached image ${name} is open`);
    this.map.delete(name);
    await a.chain.close();
  }

  get(name: string): Attached {
    const a = this.map.get(name);
    if (!a) throw notFound(`attached image ${name}`);
    return a;
  }

  has(name: string): boolean {
    return this.map.has(name);
  }

  names(): string[] {
    return [...this.map.keys()].sort();
  }

  async closeAll(): Promise<void> {
    for (const a of this.map.values()) await a.chain.close();
    this.map.clear();
  }
}

const perStore = new WeakMap<Registry, Attachments>();

/** The mount serving `reg` keeps attachments (fuse/sections.ts shows them): called once when it mounts. */
export function enableAttachments(reg: Registry): Attachments {
  let a = perStore.get(reg);
  if (!a) perStore.set(reg, (a = new Attachments()));
  return a;
}

/** The attachments of a mounted store; a store opened by the CLI alone has none to keep them in. */
export function attachmentsOf(reg: Registry): Attachments {
  const a = perStore.get(reg);
  if (!a) throw invalid('attach and detach work on a mounted store only: an attached image lasts as long as the mount');
  return a;
}
