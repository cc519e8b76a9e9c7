/** backup, restore, verify, inspect: filled in with the image format. */
import type { Command } from 'commander';

export function registerBackupCommands(_program: Command): void {}
