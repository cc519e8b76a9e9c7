/** `vdiskfs check [--repair]`: exit 0 clean, 1 errors, 2 leaks only (qemu-img check habits). */
import type { Command } from 'commander';
import { checkStore, renderCheck } from '../check/check.js';
import { storeDir } from './storeDir.js';

export function registerCheckCommand(program: Command): void {
  program
    .command('check')
    .description('check a store that is not mounted (exit 0 clean, 1 errors, 2 leaks only)')
    .option('--store <dir>', 'store directory')
    .option('--repair', 'free leaked space and purge orphaned keys')
    .action(async (o: { store?: string; repair?: boolean }) => {
      const r = await checkStore(storeDir(o.store), { repair: !!o.repair });
      process.stdout.write(renderCheck(r));
      const leaksLeft = r.leaks.length > 0 && !o.repair;
      if (r.errors.length) process.exit(1);
      if (leaksLeft) process.exit(2);
    });
}
