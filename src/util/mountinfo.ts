/** Reading /proc/self/mountinfo (pure: the caller reads the file). */

/** Fields are space-separated with spaces, tabs, newlines and backslashes written as octal escapes. */
const unescape = (field: string): string => field.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));

/** The major:minor of the mount at `mountpoint` (the last one stacked there), or undefined when none is. */
export function mountDevice(mountinfo: string, mountpoint: string): string | undefined {
  let dev: string | undefined;
  for (const line of mountinfo.split('\n')) {
    const f = line.split(' ');
    if (f.length > 4 && unescape(f[4]!) === mountpoint) dev = f[2];
  }
  return dev;
}
