// Helper library for scripts/bench.mjs (and for later bench sections: snapshot timing, backup timing, ...).
//
// Rule that shapes everything here: the bench process drives I/O against FUSE mounts whose servers are
// *child processes*. Everything is asynchronous (spawn + promises) so that a mount served by a child can
// never deadlock against this process, and so that signal handlers stay responsive. Never add
// execSync/spawnSync to code that may run inside a process serving a mount.
//
// Exports:
//   run(cmd, args, opts)            spawn, collect stdout/stderr, resolve {code, signal, stdout, stderr, seconds}
//   which(name)                     absolute path on PATH or null
//   dd(opts) / parseDd(stderr)      one dd run, bytes + seconds from dd's summary and from wall time
//   ddRepeat(opts)                  write a source file N times back to back (sustained write)
//   fio(opts)                       one fio job, IOPS parsed from the JSON output
//   dropCaches()                    echo 3 > /proc/sys/vm/drop_caches (failures ignored), then settle 5 s
//   makeRandomFile(path, bytes)     incompressible, non-zero source data; then read once (page cache)
//   startServer(cmd, args, opts)    FUSE server child: waits for a readiness line and/or predicate
//   peakRssMiB(pid)                 VmHWM of a live process
//   unmount(mp)                     fusermount -uz, failures ignored
//   waitFor(pred, timeoutMs)        poll an async predicate
//   onCleanup(fn) / runCleanups()   cleanup registry, also run on SIGINT/SIGTERM/SIGHUP
//   markdownTable(headers, rows)    render a markdown table
//   fmt(n, digits)                  number or "–"
//   fileSize(p) / allocatedBytes(p) apparent size / bytes allocated on disk (st_blocks * 512)
//   median(xs)                      median of numbers
//   mulberry32(seed)                small seeded PRNG: () => float in [0, 1)
//   fmtBytes(n)                     "1.50 GiB"
import { spawn } from 'node:child_process'
import { randomFillSync } from 'node:crypto'
import { constants as fsc } from 'node:fs'
import { access, open, readFile, stat, writeFile } from 'node:fs/promises'
import path from 'node:path'
import process from 'node:process'
import { setTimeout as sleep } from 'node:timers/promises'

export const MiB = 1024 * 1024
export const GiB = 1024 * MiB

// ---- processes --------------------------------------------------------------------------------

/**
 * Spawn asynchronously and collect output.
 * opts: { cwd, env, input, timeoutMs, check (default true: reject on non-zero exit),
 *         duringCleanup (start even after a signal: for cleanup code such as fusermount) }
 */
export function run (cmd, args = [], opts = {}) {
  const { check = true, timeoutMs = 0, input, duringCleanup = false, ...spawnOpts } = opts
  if (abortingFlag && !duringCleanup) return Promise.reject(new Error(`aborted: not starting ${cmd}`))
  return new Promise((resolve, reject) => {
    const t0 = process.hrtime.bigint()
    const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'], ...spawnOpts })
    liveChildren.add(child)
    let stdout = ''
    let stderr = ''
    child.stdout.setEncoding('utf8').on('data', (d) => { stdout += d })
    child.stderr.setEncoding('utf8').on('data', (d) => { stderr += d })
    let timer = null
    if (timeoutMs > 0) {
      timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs)
    }
    child.on('error', (err) => { liveChildren.delete(child); if (timer) clearTimeout(timer); reject(err) })
    child.on('close', (code, signal) => {
      liveChildren.delete(child)
      if (timer) clearTimeout(timer)
      const seconds = Number(process.hrtime.bigint() - t0) / 1e9
      const res = { code, signal, stdout, stderr, seconds }
      if (check && code !== 0) {
        const err = new Error(`${cmd} ${args.join(' ')} failed (${signal ?? 'exit ' + code}): ${stderr.trim().slice(-2000)}`)
        err.result = res
        return reject(err)
      }
      resolve(res)
    })
    if (input !== undefined) child.stdin.end(input)
    else child.stdin.end()
  })
}

/** Absolute path of an executable on PATH, or null. */
export async function which (name) {
  for (const dir of (process.env.PATH || '').split(path.delimiter)) {
    if (!dir) continue
    const p = path.join(dir, name)
    try {
      await access(p, fsc.X_OK)
      return p
    } catch {}
  }
  return null
}

export async function exists (p) {
  try {
    await access(p)
    return true
  } catch {
    return false
  }
}

/** Poll an async predicate until it returns truthy; returns its value or throws after timeoutMs. */
export async function waitFor (pred, timeoutMs = 20_000, intervalMs = 100, what = 'condition') {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const v = await pred()
    if (v) return v
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await sleep(intervalMs)
  }
}

// ---- cleanup --------------------------------------------------------------------------------

// Children of run() (dd, fio, qemu-img, cmp, ...) still running: killed first by runCleanups(), so that an
// interrupted run does not leave a dd writing into a mount that is being unmounted or a dir being removed.
const liveChildren = new Set()
const cleanups = []
// Set on SIGINT/SIGTERM/SIGHUP: run() and startServer() refuse to start anything new, so the interrupted
// bench cannot start the next dd/fio while the cleanup unmounts and removes the temp dir.
let abortingFlag = false
export function aborting () { return abortingFlag }
/**
 * Register an async cleanup; returns a function that runs it now (once) and deregisters it. Calling it
 * again, or while runCleanups() is running it, returns the same promise (so a caller never sees a
 * half-finished cleanup as done).
 */
export function onCleanup (fn) {
  const entry = { fn, promise: null }
  entry.run = () => {
    if (!entry.promise) entry.promise = Promise.resolve().then(fn)
    return entry.promise
  }
  cleanups.push(entry)
  return entry.run
}
/**
 * Run all pending cleanups, newest first, never throwing: first kill the run() children still going.
 * Concurrent callers (signal handler and the main flow's finally) share one pass.
 */
let cleanupPass = null
export function runCleanups () {
  if (!cleanupPass) cleanupPass = cleanupAll().finally(() => { cleanupPass = null })
  return cleanupPass
}
async function cleanupAll () {
  const children = [...liveChildren]
  for (const c of children) {
    try { c.kill('SIGKILL') } catch {}
  }
  if (children.length) {
    await Promise.race([
      Promise.all(children.map((c) => (c.exitCode !== null || c.signalCode !== null) ? null : new Promise((resolve) => c.once('close', resolve)))),
      sleep(5_000)
    ])
  }
  while (cleanups.length) {
    const entry = cleanups.pop()
    try { await entry.run() } catch (err) { process.stderr.write(`cleanup failed: ${err.message}\n`) }
  }
}
let signalsInstalled = false
export function installSignalCleanup () {
  if (signalsInstalled) return
  signalsInstalled = true
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
    process.on(sig, async () => {
      if (abortingFlag) return // cleanup already under way
      abortingFlag = true
      process.stderr.write(`\n${sig}: cleaning up (unmounting)...\n`)
      await runCleanups()
      process.exit(130)
    })
  }
}

// ---- FUSE servers --------------------------------------------------------------------------

// fusermount3 (FUSE 3), or plain fusermount where only that is installed
let fusermountCmd
export async function fusermountCommand () {
  fusermountCmd ??= (await which('fusermount3')) ? 'fusermount3' : 'fusermount'
  return fusermountCmd
}

export async function unmount (mp) {
  await run(await fusermountCommand(), ['-uz', mp], { check: false, duringCleanup: true })
}

export async function isMounted (mp) {
  const mounts = await readFile('/proc/mounts', 'utf8')
  const abs = path.resolve(mp)
  return mounts.split('\n').some((l) => l.split(' ')[1] === abs)
}

/** Peak resident set size (VmHWM) of a live process, MiB; null if unreadable. */
export async function peakRssMiB (pid) {
  try {
    const s = await readFile(`/proc/${pid}/status`, 'utf8')
    const m = /^VmHWM:\s+(\d+)\s+kB/m.exec(s)
    return m ? Number(m[1]) / 1024 : null
  } catch {
    return null
  }
}

/**
 * Start a FUSE server as a child process.
 * opts: { mountpoint (unmounted on stop), readyLine (regex on stdout), ready (async predicate),
 *         timeoutMs, env, cwd, name }
 * Returns { child, pid, output(), peakRssMiB(), stop() }. stop(): SIGTERM, wait, fusermount -uz, SIGKILL.
 */
export async function startServer (cmd, args, opts = {}) {
  const { mountpoint, readyLine, ready, timeoutMs = 30_000, name = path.basename(cmd), ...spawnOpts } = opts
  if (abortingFlag) throw new Error(`aborted: not starting ${name}`)
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], ...spawnOpts })
  let out = ''
  let exited = null
  const exitP = new Promise((resolve) => child.on('exit', (code, signal) => { exited = { code, signal }; resolve(exited) }))
  child.on('error', (err) => { exited = { code: -1, signal: null, error: err } })
  let sawLine = !readyLine
  // Always drain the pipes (a full pipe would block the server); keep only the tail of the output.
  const keep = (d) => {
    out += d
    if (out.length > 65536) out = out.slice(-16384)
  }
  child.stdout.setEncoding('utf8').on('data', (d) => {
    keep(d)
    if (readyLine && readyLine.test(out)) sawLine = true
  })
  child.stderr.setEncoding('utf8').on('data', keep)
  const tail = () => out.slice(-4000)

  const stop = onCleanup(async () => {
    if (!exited) {
      child.kill('SIGTERM')
      await Promise.race([exitP, sleep(10_000)])
    }
    if (mountpoint) await unmount(mountpoint)
    if (!exited) {
      child.kill('SIGKILL')
      await Promise.race([exitP, sleep(5_000)])
    }
  })

  try {
    await waitFor(async () => {
      if (exited) throw new Error(`${name} exited early (${JSON.stringify(exited)}): ${tail()}`)
      if (!sawLine) return false
      return ready ? await ready() : true
    }, timeoutMs, 100, `${name} to be ready`)
  } catch (err) {
    await stop()
    err.message += `\n--- ${name} output ---\n${tail()}`
    throw err
  }
  return {
    child,
    pid: child.pid,
    output: tail,
    peakRssMiB: () => peakRssMiB(child.pid),
    exited: () => exited,
    stop
  }
}

// ---- data ---------------------------------------------------------------------------------

/** Write `bytes` of random data to `file` (1 MiB chunks), then read it once so it sits in page cache. */
export async function makeRandomFile (file, bytes) {
  const chunk = Buffer.allocUnsafe(MiB)
  const fh = await open(file, 'w')
  try {
    for (let off = 0; off < bytes; off += chunk.length) {
      randomFillSync(chunk)
      const n = Math.min(chunk.length, bytes - off)
      await fh.write(chunk, 0, n, off)
    }
  } finally {
    await fh.close()
  }
  await warmFile(file)
}

/** Read a file once (into the page cache). */
export async function warmFile (file) {
  await run('dd', [`if=${file}`, 'of=/dev/null', 'bs=1M'])
}

/**
 * Drop the page cache, then give the machine a few seconds (half a second with BENCH_QUICK=1): on the
 * benchmark VM the guest hands freed memory back to the host (free page reporting, about 2 s after it is
 * freed), and figures measured in that window came out several times slower (a plain file read from the
 * page cache at 0.5 instead of 3 GB/s).
 */
export async function dropCaches () {
  await run('sync', [], { check: false })
  let ok = true
  try {
    await writeFile('/proc/sys/vm/drop_caches', '3\n')
  } catch {
    ok = false
  }
  await sleep(process.env.BENCH_QUICK === '1' ? 500 : 5000)
  return ok
}

// ---- dd / fio -------------------------------------------------------------------------------

/** Parse dd's summary line: "1073741824 bytes (1.1 GB, 1.0 GiB) copied, 1.5 s, 716 MB/s". */
export function parseDd (stderr) {
  const m = /(\d+) bytes .*copied, ([\d.,e+-]+) s/.exec(stderr)
  if (!m) return null
  return { bytes: Number(m[1]), seconds: Number(m[2].replace(',', '.')) }
}

/**
 * One dd run. opts: { src, dst, bs ('1M'), count, seek, skip, conv (e.g. 'notrunc,fsync'), iflag, oflag }
 * Returns { bytes, seconds (dd's), wallSeconds, MBps (decimal MB/s from dd's seconds), wallMBps }.
 */
export async function dd (opts) {
  const args = [`if=${opts.src}`, `of=${opts.dst}`, `bs=${opts.bs || '1M'}`]
  if (opts.count !== undefined) args.push(`count=${opts.count}`)
  if (opts.seek) args.push(`seek=${opts.seek}`)
  if (opts.skip) args.push(`skip=${opts.skip}`)
  if (opts.conv) args.push(`conv=${opts.conv}`)
  if (opts.iflag) args.push(`iflag=${opts.iflag}`)
  if (opts.oflag) args.push(`oflag=${opts.oflag}`)
  const res = await run('dd', args, { timeoutMs: opts.timeoutMs || 0 })
  const parsed = parseDd(res.stderr)
  if (!parsed) throw new Error(`cannot parse dd output: ${res.stderr}`)
  return {
    bytes: parsed.bytes,
    seconds: parsed.seconds,
    wallSeconds: res.seconds,
    MBps: parsed.bytes / 1e6 / parsed.seconds,
    wallMBps: parsed.bytes / 1e6 / res.seconds
  }
}

/**
 * Sustained write: copy `src` (chunkMiB MiB) into `dst` `times` times back to back at increasing offsets;
 * the last copy adds fsync so the figure includes getting the data to the store.
 */
export async function ddRepeat ({ src, dst, chunkMiB, times, timeoutMs }) {
  let bytes = 0
  let seconds = 0
  let wallSeconds = 0
  for (let i = 0; i < times; i++) {
    const conv = i === times - 1 ? 'notrunc,fsync' : 'notrunc'
    const r = await dd({ src, dst, bs: '1M', count: chunkMiB, seek: i * chunkMiB, conv, timeoutMs })
    bytes += r.bytes
    seconds += r.seconds
    wallSeconds += r.wallSeconds
  }
  return { bytes, seconds, wallSeconds, MBps: bytes / 1e6 / seconds, wallMBps: bytes / 1e6 / wallSeconds }
}

/**
 * One fio job (psync, buffered). opts: { filename, rw ('randread'|'randwrite'|...), bs ('4k'), size ('1G'),
 * runtime (s), extra (more fio arguments) }. Returns { iops, MBps, latUsMean, errors } for the job's read or write
 * side, and job: fio's JSON for the job (latency percentiles, the sync section with --fsync).
 */
export async function fio ({ filename, rw, bs = '4k', size = '1G', runtime = 15, extra = [] }) {
  const args = [
    '--name=r', `--filename=${filename}`, `--rw=${rw}`, `--bs=${bs}`, `--size=${size}`,
    `--runtime=${runtime}`, '--time_based', '--ioengine=psync', '--direct=0',
    '--fallocate=none', '--output-format=json', ...extra
  ]
  const res = await run('fio', args, { timeoutMs: (runtime + 120) * 1000 })
  // fio may print warnings before the JSON document
  const start = res.stdout.indexOf('{')
  const json = JSON.parse(res.stdout.slice(start))
  const job = json.jobs[0]
  const side = rw.includes('write') && !rw.includes('read') ? job.write : job.read
  return {
    iops: side.iops,
    MBps: side.bw_bytes / 1e6,
    latUsMean: side.clat_ns ? side.clat_ns.mean / 1000 : null,
    errors: job.error,
    job
  }
}

// ---- output ---------------------------------------------------------------------------------

export function fmt (n, digits = 0) {
  if (n === null || n === undefined || Number.isNaN(n)) return '–'
  if (typeof n !== 'number') return String(n)
  return n.toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: digits })
}

export function markdownTable (headers, rows) {
  const cells = [headers, ...rows].map((r) => r.map((c) => String(c)))
  const widths = headers.map((_, i) => Math.max(3, ...cells.map((r) => (r[i] ?? '').length)))
  const line = (r) => '| ' + r.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join(' | ') + ' |'
  const sep = '| ' + widths.map((w, i) => (i === 0 ? '-'.repeat(w) : '-'.repeat(w - 1) + ':')).join(' | ') + ' |'
  return [line(cells[0]), sep, ...cells.slice(1).map(line)].join('\n')
}

export async function fileSize (p) {
  return (await stat(p)).size
}

/** Bytes allocated on disk (st_blocks * 512). */
export async function allocatedBytes (p) {
  return (await stat(p)).blocks * 512
}

export function median (xs) {
  const v = [...xs].sort((a, b) => a - b)
  if (!v.length) return null
  const m = v.length >> 1
  return v.length % 2 ? v[m] : (v[m - 1] + v[m]) / 2
}

/** Small seeded PRNG (mulberry32): returns () => float in [0, 1). */
export function mulberry32 (seed) {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6D2B79F5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

export function fmtBytes (n) {
  if (n === null || n === undefined || Number.isNaN(n)) return '–'
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB']
  let i = 0
  let v = n
  while (Math.abs(v) >= 1024 && i < units.length - 1) { v /= 1024; i++ }
  return `${v.toFixed(i === 0 ? 0 : 2)} ${units[i]}`
}
