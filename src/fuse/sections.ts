/** Registers the optional sections of `.vdisk/` (backup copies, deltas, import, restore). */
import type { Tree } from './nodes.js';
import type { Registry } from '../disk/registry.js';

export function installSections(_tree: Tree, _reg: Registry): void {
  // Filled in by the backup image work (copies/, deltas/, import/, restore/).
}
