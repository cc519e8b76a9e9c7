/**
 * `vdiskfs check [--repair] [--verify-data] [--json]`, with qemu-img check's exit codes: 0 clean, 1 the check could not be
 * completed (no store, the store is mounted, unreadable), 2 errors (corruption), 3 leaks only.
 */
import type { Command } from 'commander';
import { checkStore, renderCheck } from '../check/check.js';
import { errorCode, errorMessage } from '../errors.js';
import { storeDir } from './storeDir.js';
import { CHECK_EXIT } from './exit.js';

export function registerCheckCommand(program: Command): void {
  program
    .command('check')
    .description('check a store that is not mounted (exit 0 clean, 1 check not completed, 2 errors, 3 leaks only)')
    .option('--store <dir>', 'store directory')
    .option('--repair', 'free leaked space and purge orphaned keys')
    .option('--verify-data', 'also read every referenced block and check it against its checksum')
    .option('--json', 'machine-readable report (with "result" and "exitCode")')
    .action(async (o: { store?: string; repair?: boolean; json?: boolean; verifyData?: boolean }) => {
      let r;
      try {
        r = await checkStore(storeDir(o.store), { repair: !!o.repair, verifyData: !!o.verifyData });
      } catch (e) {
        if (o.json) process.stdout.write(JSON.stringify({ result: 'not completed', exitCode: CHECK_EXIT.NOT_COMPLETED, code: errorCode(e), error: errorMessage(e) }, null, 2) + '\n');
        process.stderr.write(`vdiskfs: check not completed: ${errorMessage(e)}\n`);
        process.exit(CHECK_EXIT.NOT_COMPLETED);
      }
      const leaksLeft = r.leaks.length > 0 && !o.repair;
      const [result, exitCode] = r.errors.length ? ['errors', CHECK_EXIT.ERRORS] : leaksLeft ? ['leaks', CHECK_EXIT.LEAKS] : ['clean', CHECK_EXIT.CLEAN];
      process.stdout.write(o.json ? JSON.stringify({ result, exitCode, ...r }, null, 2) + '\n' : renderCheck(r));
      if (exitCode !== CHECK_EXIT.CLEAN) process.exit(exitCode);
    });
}
