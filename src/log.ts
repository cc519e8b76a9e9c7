/** The one place pino is configured. Modules take `logger(component)`. */
import { pino, destination, multistream, type Logger, type DestinationStream, type Level } from 'pino';

let root: Logger = pino({ level: 'silent' });

export function configureLog(opts: { level: string; file?: string; stderr?: boolean }): Logger {
  const streams: { stream: DestinationStream; level: Level }[] = [];
  const level = opts.level as Level;
  if (opts.file) streams.push({ stream: destination({ dest: opts.file, mkdir: true, sync: false }), level });
  if (opts.stderr) streams.push({ stream: destination(2), level });
  root = streams.length ? pino({ level }, multistream(streams)) : pino({ level: 'silent' });
  return root;
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
