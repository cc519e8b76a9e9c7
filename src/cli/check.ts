/**
 * `vdiskfs check [--repair]`, with qemu-img check's exit codes: 0 clean, 1 the check could not be completed
 * (no store, the store is mounted, unreadable), 2 errors (corruption), 3 leaks only.
 */
import type { Command } from 'commander';
import { checkStore, renderCheck } from '../check/check.js';
import { errorMessage } from '../errors.js';
import { storeDir } from './storeDir.js';
import { CHECK_EXIT } from './exit.js';

export function registerCheckCommand(program: Command): void {
  program
    .command('check')
    .description('check a store that is not mounted (exit 0 clean, 1 check not completed, 2 errors, 3 leaks only)')
    .option('--store <dir>', 'store directory')
    .option('--repair', 'free leaked space and purge orphaned keys')
    .action(async (o: { store?: string; repair?: boolean }) => {
      let r;
      try {
        r = await checkStore(storeDir(o.store), { repair: !!o.repair });
      } catch (e) {
        process.stderr.write(`vdiskfs: check not completed: ${errorMessage(e)}\n`);
        process.exit(CHECK_EXIT.NOT_COMPLETED);
      }
      process.stdout.write(renderCheck(r));
      const leaksLeft = r.leaks.length > 0 && !o.repair;
      if (r.errors.length) process.exit(CHECK_EXIT.ERRORS);
      if (leaksLeft) process.exit(CHECK_EXIT.LEAKS);
    });
}
