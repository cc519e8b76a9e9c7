/**
 * Where the store lives: --store, else $VDISKFS_STORE, else the default for the user: /var/lib/vdiskfs for
 * root (a system daemon's state), $XDG_DATA_HOME/vdiskfs for others, else ~/.local/share/vdiskfs (the XDG
 * default; a relative $XDG_DATA_HOME is ignored, as the XDG base directory specification says).
 */
import { homedir } from 'node:os';
import { isAbsolute, join, resolve } from 'node:path';

export const ROOT_STORE = '/var/lib/vdiskfs';

export function defaultStoreDir(env: NodeJS.ProcessEnv = process.env, uid: number = process.getuid?.() ?? -1, home: string = homedir()): string {
  if (env.VDISKFS_STORE) return env.VDISKFS_STORE;
  if (uid === 0) return ROOT_STORE;
  const xdg = env.XDG_DATA_HOME;
  return join(xdg && isAbsolute(xdg) ? xdg : join(home, '.local', 'share'), 'vdiskfs');
}

export function storeDir(opt: string | undefined): string {
  return resolve(opt || defaultStoreDir());
}
