/** Disk and snapshot names: letters, digits, '.', '_', '-'; not starting with '.'; 1 to 100 characters. */
import { invalid } from '../errors.js';

const NAME = /^[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}$/;

export function checkName(name: string, what = 'disk'): void {
  if (!NAME.test(name)) {
    const shown = JSON.stringify(name.length > 60 ? name.slice(0, 60) + '…' : name);
    throw invalid(`bad ${what} name ${shown}: use 1-100 letters, digits, '.', '_', '-', not starting with '.'`);
  }
}
