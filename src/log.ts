/**
 * The one place pino is configured. Modules take `logger(component)`.
 *
 * The log file gets pino's JSON lines (one object per line, for tools). stderr (`-f`) gets the same lines
 * as one readable line each when it is a terminal (formatLine below: a dozen lines of ours rather than
 * pino-pretty, which would add ten packages, or a pino transport, which would add a worker thread to the
 * process that serves the mount), JSON otherwise; VDISKFS_LOG_FORMAT=pretty|json overrides.
 */
import { pino, destination, multistream, type Logger, type DestinationStream, type Level } from 'pino';

let root: Logger = pino({ level: 'silent' });
let file: ReturnType<typeof destination> | undefined;

const LEVEL_NAMES: Record<number, string> = { 10: 'TRACE', 20: 'DEBUG', 30: 'INFO', 40: 'WARN', 50: 'ERROR', 60: 'FATAL' };
/** Keys every line has, shown in the line's head rather than as key=value. */
const HEAD = new Set(['level', 'time', 'pid', 'hostname', 'component', 'msg', 'err']);

const show = (v: unknown): string => (typeof v === 'string' ? (/^[^\s"=]+$/.test(v) ? v : JSON.stringify(v)) : JSON.stringify(v));

/** One pino JSON line as `HH:MM:SS.mmm LEVEL component: msg key=value …` (an error's stack indented below). */
export function formatLine(json: string): string {
  let o: Record<string, unknown>;
  try {
    o = JSON.parse(json) as Record<string, unknown>;
  } catch {
    return json.endsWith('\n') ? json : json + '\n';
  }
  const t = new Date(typeof o.time === 'number' ? o.time : Date.now());
  const hms = [t.getHours(), t.getMinutes(), t.getSeconds()].map((n) => String(n).padStart(2, '0')).join(':') + '.' + String(t.getMilliseconds()).padStart(3, '0');
  const level = (LEVEL_NAMES[o.level as number] ?? String(o.level)).padEnd(5);
  const rest = Object.entries(o).filter(([k]) => !HEAD.has(k)).map(([k, v]) => `${k}=${show(v)}`);
  const err = o.err as { message?: string; stack?: string } | undefined;
  if (err?.message) rest.push(`err=${show(err.message)}`);
  let line = `${hms} ${level} ${o.component ? `${String(o.component)}: ` : ''}${String(o.msg ?? '')}${rest.length ? ' ' + rest.join(' ') : ''}\n`;
  if (err?.stack) line += err.stack.split('\n').slice(1).map((l) => `    ${l.trim()}\n`).join('');
  return line;
}

/** Whether stderr gets readable lines: a terminal, unless VDISKFS_LOG_FORMAT says otherwise. */
export function prettyStderr(isTTY: boolean, env: NodeJS.ProcessEnv = process.env): boolean {
  const f = env.VDISKFS_LOG_FORMAT;
  return f === 'pretty' ? true : f === 'json' ? false : isTTY;
}

export function configureLog(opts: { level: string; file?: string; stderr?: boolean }): Logger {
  const streams: { stream: DestinationStream; level: Level }[] = [];
  const level = opts.level as Level;
  file = opts.file ? destination({ dest: opts.file, sync: false }) : undefined;
  // A failing log file (disk full, store removed under a failed mount) must not take the daemon down either.
  file?.on('error', () => undefined);
  if (file) streams.push({ stream: file, level });
  if (opts.stderr) {
    // A closed terminal (EIO) or pipe must not take the daemon down: stderr logging just stops.
    const err = destination({ fd: 2, sync: true });
    err.on('error', () => undefined);
    const stream = prettyStderr(!!process.stderr.isTTY) ? { write: (s: string) => err.write(formatLine(s)) } : err;
    streams.push({ stream, level });
  }
  root = streams.length ? pino({ level }, multistream(streams)) : pino({ level: 'silent' });
  return root;
}

/**
 * SIGHUP (logrotate): open the log file again at its path, so that after `mv vdiskfs.log vdiskfs.log.1` the
 * next lines go to a new vdiskfs.log. Lines written before the reopen stay in the moved file.
 */
export function reopenLog(): void {
  file?.reopen();
}

/** Loggers are resolved at call time so that modules loaded before configureLog() still log. */
export function logger(component: string): Logger {
  return new Proxy({} as Logger, {
    get(_t, prop) {
      const child = root.child({ component });
      const v = (child as unknown as Record<string | symbol, unknown>)[prop];
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(child) : v;
    },
  });
}
