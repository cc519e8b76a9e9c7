/** Where the store lives: --store, else $VDISKFS_STORE, else ~/.local/share/vdiskfs. */
import { homedir } from 'node:os';
import { join, resolve } from 'node:path';

export function defaultStoreDir(): string {
  return process.env.VDISKFS_STORE || join(homedir(), '.local', 'share', 'vdiskfs');
}

export function storeDir(opt: string | undefined): string {
  return resolve(opt || defaultStoreDir());
}
