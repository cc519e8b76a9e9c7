#!/usr/bin/env node
/**
 * The vdiskfs command line: the only code that imports commander. Each subcommand is a thin adapter over
 * the core; errors become exit codes in exit.ts. There is no default command: `vdiskfs DIR` mounts an
 * existing directory (mountCmd.ts), and any other unknown word is a usage error with a suggestion.
 */
import { Command } from 'commander';
import { commanderExit, die } from './exit.js';
import { registerMountCommands, withImplicitMount } from './mountCmd.js';
import { registerStoreCommands } from './store.js';
import { registerBackupCommands } from './backup.js';
import { registerImageCommands } from './image.js';
import { registerCheckCommand } from './check.js';
import { registerReplicateCommand } from './replicate.js';

const program = new Command();
program
  .name('vdiskfs')
  .description('Thin-provisioned virtual disks, snapshots and compacted backups as files (FUSE)')
  .version('0.1.0')
  .usage('[-p|-q] <command> [options]  (or: vdiskfs MOUNTPOINT [options] to mount)')
  .option('-p, --progress', 'show progress on stderr (backup, restore, verify), also when it is not a terminal')
  .option('-q, --quiet', 'no progress and no summary (errors only)')
  .exitOverride(commanderExit)
  .showSuggestionAfterError(true);

registerMountCommands(program);
registerStoreCommands(program);
registerBackupCommands(program);
registerImageCommands(program);
registerCheckCommand(program);
registerReplicateCommand(program);

const names = new Set(['help', ...program.commands.flatMap((c) => [c.name(), ...c.aliases()])]);
const argv = withImplicitMount(process.argv, names, new Set(['-p', '--progress', '-q', '--quiet']));
program.parseAsync(argv).catch(die);
