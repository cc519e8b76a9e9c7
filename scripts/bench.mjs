#!/usr/bin/env node
// vdiskfs benchmark: the same figures, side by side, for
//   plain    a plain file in a temp dir (the filesystem the store lives on)
//   null     scripts/nullfs.mjs, a FUSE filesystem that discards writes and reads zeros: the ceiling for
//            any fuse-napi filesystem on this machine
//   pass     scripts/nullfs.mjs over a plain file in the temp dir (passthrough): each request one O_DIRECT
//            read or write of that file, answered when done; no tables, caches or checksums. The least a
//            FUSE filesystem keeping its data on this disk does per request: the ceiling of uncached reads
//   vdiskfs  a disk file of a vdiskfs mount (dist/cli/main.js mount ... -f), store in the temp dir
//   vdiskfs-pagecache  the same with VDISKFS_POOL_IO=buffered: pool files read and written through the page
//            cache instead of with O_DIRECT (store/poolFile.ts instead of store/directPool.ts)
//   vdiskfs-leveldb  the same with `--block-store leveldb`: block data as values inside the store's LevelDB
//            instead of pool files (the single-database layout, measured side by side with the default)
//   qemu     qemu-storage-daemon's FUSE export of a raw file (skipped if the binary is absent)
// and prints a markdown table plus the ratios to the null-FUSE figures. Results also go to JSON. The plain
// file is also read with O_DIRECT (fio, 2 MiB x 8 in flight): what the disk gives, the bound of any cold read
// through a filesystem whose data is on it; each target's cold read is also printed as a ratio to that.
//
//   npm run bench                          full run (1 GiB sequential, 8 GiB sustained, 15 s fio)
//   BENCH_QUICK=1 npm run bench            smoke run (64 MiB sizes, 3 s fio)
//   BENCH_ONLY=plain,null npm run bench    pick targets (plain,null,pass,vdiskfs,vdiskfs-nosums,vdiskfs-pagecache,vdiskfs-leveldb,qemu) and sections
//                                          (snapshot,backup,sparse,fig6,database,images,replicate,scrub,workingset,ceph); keys match exactly (vdiskfs is not vdiskfs-leveldb)
//                                          vdiskfs-nosums: vdiskfs with VDISKFS_CHECKSUMS=off, printed as the checksums' cost:
//                                          the ratio of the medians, each round's pair (the two ran the figure
//                                          one after the other; an even BENCH_ROUNDS gives both orders alike),
//                                          and daemon CPU per unit of work
//   BENCH_SUSTAINED_GIB=8                  size of the sustained write
//   BENCH_ROUNDS=3                         rounds (medians are reported; 1 with BENCH_QUICK)
//   BENCH_DIR=/path                        where the temp dir goes (default: os.tmpdir())
//   BENCH_JSON=/path.json                  results file (default /tmp/vdiskfs-bench-results.json)
//   BENCH_KEEP=1                           keep the temp dir
//
// All FUSE servers are child processes; this process only drives dd/fio asynchronously (see lib.mjs).
//
// After the target table come SECTIONS, each with its own vdiskfs mount and store and its own tables
// (BENCH_ONLY keys `snapshot` and `backup`; BENCH_QUICK=1 shrinks their sizes 16×):
//   snapshot  scripts/bench/snapshot.mjs: snapshot creation time with 1 vs 8 GiB written (median of 5),
//             dd write MB/s on a fresh disk vs over a region a snapshot holds
//   backup    scripts/bench/backup.mjs: dd of the compacted copy vs qemu-img convert (qcow2, raw) vs dd of
//             the full snapshot file, restore via import/ and via the CLI; copy of a 1 TiB disk holding
//             1 GiB vs a 1 GiB disk
//   fig6      scripts/bench/fig6.mjs: the specification's FIG. 6 (ext4 at 20% and 80%: tar, full dump, copy),
//             copy/backup/verify/restore per used byte against qemu-img and the disk's O_DIRECT read, on
//             shuffled-order and ext4 data, and live-disk writes during a backup (BENCH_ONLY=fig6 alone)
//   database  scripts/bench/database.mjs: fio 8 KiB writes with --fsync=1 (fsync latency), 8 KiB random
//             writes right after a snapshot vs without, pgbench on ext4 in a disk vs on a plain file, and
//             snapshot latency under that load; every figure against a plain file in the same run
//   images    scripts/bench/images.mjs: an attached image chain (full + delta) against the same snapshot in
//             the store (rand 4K IOPS, seq read), and `vdiskfs merge` against reading its inputs
//   replicate scripts/bench/replicate.mjs: `vdiskfs replicate` between two mounted stores (full, then deltas
//             with 1% and 10% changed: seconds and bytes), rollback time against the data changed
//   scrub     scripts/bench/scrub.mjs: `scrub` of 1 GiB of data against the disk's own O_DIRECT read
//   workingset scripts/bench/workingset.mjs: random 8 KiB writes and 4 KiB reads over all of a disk with 8 GiB
//             written (64 KiB blocks) and one with 2 GiB (8 KiB blocks), against the same over 1 GiB of it
//   ceph      scripts/bench/ceph.mjs: a store on Ceph (--block-store rados, its own local cluster) against
//             `rados bench` and `rbd bench` on that cluster, and a write with one OSD down (needs setup --ceph)
//
// Extending: push to FIGURES (one column each; run() returns a number or null when it does not apply to
// the target), to TARGETS, or to SECTIONS ({ key, title, run(ctx, res) } filling res.tables/figures/notes/
// errors; ctx has dir, src, root, config, mountpoints — push any mountpoint you create there).
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import process from 'node:process'
import { fileURLToPath } from 'node:url'
import {
  GiB, MiB, aborting, dd, ddRepeat, dropCaches, exists, fio, fmt, fusermountCommand, installSignalCleanup, isMounted, makeRandomFile,
  markdownTable, onCleanup, run, runCleanups, startServer, unmount, waitFor, which
} from './bench/lib.mjs'
import { snapshotSection } from './bench/snapshot.mjs'
import { backupSection } from './bench/backup.mjs'
import { sparseSection } from './bench/sparse.mjs'
import { fig6Section } from './bench/fig6.mjs'
import { serverEnv, serverFlags, startNullfs } from './bench/vdisk.mjs'
import { databaseSection } from './bench/database.mjs'
import { imagesSection } from './bench/images.mjs'
import { replicateSection } from './bench/replicate.mjs'
import { scrubSection } from './bench/scrub.mjs'
import { workingsetSection } from './bench/workingset.mjs'
import { cephSection } from './bench/ceph.mjs'

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const env = process.env

// ---- configuration ---------------------------------------------------------------------------

export const config = (() => {
  const quick = env.BENCH_QUICK === '1'
  const seqMiB = quick ? 64 : 1024
  const sustainedGiB = Number(env.BENCH_SUSTAINED_GIB || 8)
  return {
    quick,
    seqMiB,
    // sustained write = the seqMiB source written `sustainedTimes` times back to back
    sustainedTimes: quick ? 2 : Math.max(1, Math.round(sustainedGiB * 1024 / seqMiB)),
    // every figure is measured `rounds` times, the targets taking turns, and the median is reported
    rounds: Math.max(1, Number(env.BENCH_ROUNDS || (quick ? 1 : 3))),
    fioRuntime: quick ? 3 : 15,
    fioSize: quick ? '64M' : '1G',
    only: (env.BENCH_ONLY || 'plain,null,pass,vdiskfs,vdiskfs-nosums,vdiskfs-pagecache,vdiskfs-leveldb,qemu,snapshot,backup,sparse,fig6,database,images,replicate,scrub,ceph').split(',').map((s) => s.trim()).filter(Boolean),
    baseDir: env.BENCH_DIR || os.tmpdir(),
    jsonOut: env.BENCH_JSON || '/tmp/vdiskfs-bench-results.json',
    keep: env.BENCH_KEEP === '1',
    // size of the virtual disk / null file / raw image: room for the sustained write
    diskGiB: Math.max(16, Math.ceil((quick ? 2 * 64 * MiB : sustainedGiB * GiB) / GiB) + 1),
    ddTimeoutMs: 60 * 60 * 1000
  }
})()

// ---- targets ---------------------------------------------------------------------------------
// setup(ctx) returns { file, server? , mountpoint?, ctl?, note? }; teardown via server.stop().

/**
 * setup() of a vdiskfs target: a fresh store ctx.dir/<store>, mounted on ctx.dir/<mnt> with `mountArgs`
 * added to the mount command, and one disk `bench` of config.diskGiB.
 */
function vdiskfsSetup ({ mnt, store: storeName, mountArgs = [], env: extraEnv = {} }) {
  return async function setup (ctx) {
    const cli = path.join(ROOT, 'dist/cli/main.js')
    if (!(await exists(cli))) return { skip: `${path.relative(ROOT, cli)} not built (npm run build)` }
    const mountpoint = path.join(ctx.dir, mnt)
    const store = path.join(ctx.dir, storeName)
    await mkdir(mountpoint, { recursive: true })
    await mkdir(store, { recursive: true })
    if (!ctx.mountpoints.includes(mountpoint)) ctx.mountpoints.push(mountpoint)
    const ctl = path.join(mountpoint, '.vdisk', 'ctl')
    const server = await startServer(process.execPath, [...(await serverFlags(ROOT)), cli, 'mount', mountpoint, '--store', store, ...mountArgs, '-f'],
      { mountpoint, env: { ...(await serverEnv(ROOT)), ...extraEnv }, ready: async () => (await isMounted(mountpoint)) && exists(ctl), name: `vdiskfs${mountArgs.length ? ` ${mountArgs.join(' ')}` : ''}` })
    const file = path.join(mountpoint, 'bench')
    // Same open flags as the shell's `echo ... > ctl` (O_WRONLY|O_CREAT|O_TRUNC).
    await writeFile(ctl, `create bench ${config.diskGiB}G\n`)
    await waitFor(() => exists(file), 10_000, 50, `${file} to appear`)
    return { file, server, mountpoint, ctl, store }
  }
}

/**
 * setup() of scripts/nullfs.mjs mounted on ctx.dir/<mnt>: null FUSE, or with `backing` (a file in ctx.dir)
 * the passthrough over it.
 */
function nullfsSetup ({ mnt, name, backing }) {
  return (ctx) => startNullfs({ root: ROOT, mountpoint: path.join(ctx.dir, mnt), bytes: config.diskGiB * GiB, backing: backing && path.join(ctx.dir, backing), name })
}

export const TARGETS = [
  {
    key: 'plain',
    label: 'plain file',
    async setup (ctx) {
      // diskCeiling: the cold-read figure also reads this file with O_DIRECT, what the disk itself gives
      return { file: path.join(ctx.dir, 'plain.img'), diskCeiling: true }
    }
  },
  {
    key: 'null',
    label: 'null FUSE',
    setup: nullfsSetup({ mnt: 'mnt-null', name: 'nullfs' })
  },
  {
    key: 'pass',
    label: 'passthrough FUSE (O_DIRECT file)',
    setup: nullfsSetup({ mnt: 'mnt-pass', name: 'passthrough', backing: 'pass.img' })
  },
  {
    key: 'vdiskfs',
    label: 'vdiskfs',
    setup: vdiskfsSetup({ mnt: 'mnt-vdiskfs', store: 'store' })
  },
  {
    // The cost of block checksums (issue 17): the same build with them off, side by side.
    key: 'vdiskfs-nosums',
    label: 'vdiskfs, checksums off',
    setup: vdiskfsSetup({ mnt: 'mnt-vdiskfs-nosums', store: 'store-nosums', env: { VDISKFS_CHECKSUMS: 'off' } })
  },
  {
    key: 'vdiskfs-pagecache',
    label: 'vdiskfs, pool through the page cache',
    setup: vdiskfsSetup({ mnt: 'mnt-vdiskfs-pagecache', store: 'store-pagecache', env: { VDISKFS_POOL_IO: 'buffered' } })
  },
  {
    key: 'vdiskfs-leveldb',
    label: 'vdiskfs, block data in LevelDB',
    setup: vdiskfsSetup({ mnt: 'mnt-vdiskfs-leveldb', store: 'store-leveldb', mountArgs: ['--block-store', 'leveldb'] })
  },
  {
    key: 'qemu',
    label: 'qemu-storage-daemon FUSE',
    async setup (ctx) {
      const qsd = await which('qemu-storage-daemon')
      if (!qsd) return { skip: 'qemu-storage-daemon not on PATH (scripts/setup.sh --bench installs it if available)' }
      const raw = path.join(ctx.dir, 'qemu.raw')
      const mountpoint = path.join(ctx.dir, 'qemu-export') // a regular file
      await run('truncate', ['-s', `${config.diskGiB}G`, raw])
      await writeFile(mountpoint, '')
      const server = await startServer(qsd, [
        '--blockdev', `driver=file,node-name=f,filename=${raw}`,
        '--export', `type=fuse,id=e,node-name=f,mountpoint=${mountpoint},writable=on`
      ], { mountpoint, ready: () => isMounted(mountpoint), name: 'qemu-storage-daemon' })
      return { file: mountpoint, server, mountpoint }
    }
  }
]

// ---- figures ---------------------------------------------------------------------------------
// Run in order against each target; run(ctx, t) returns a number (or null: not applicable).

export const FIGURES = [
  {
    key: 'seqWriteMBps',
    header: 'seq write MB/s',
    digits: 0,
    async run (ctx, t) {
      const r = await dd({ src: ctx.src, dst: t.file, count: config.seqMiB, conv: 'notrunc,fsync', timeoutMs: config.ddTimeoutMs })
      t.raw.seqWrite = r
      return r.MBps
    }
  },
  {
    // Cold, then at once warm: both reads run here, back to back, so that no other target's cache drop
    // falls between them (the targets take turns figure by figure); the warm figure below reports the second.
    key: 'seqReadMBps',
    header: 'seq read, cold MB/s',
    digits: 0,
    async run (ctx, t) {
      await dropCaches()
      const r = await dd({ src: t.file, dst: '/dev/null', count: config.seqMiB, timeoutMs: config.ddTimeoutMs })
      t.raw.seqRead = r
      // The same read again: the store's files are now in the page cache, so this measures the FUSE path
      // itself. The cold read cannot beat the disk (see the plain file's cold figure).
      t.raw.seqReadWarm = await dd({ src: t.file, dst: '/dev/null', count: config.seqMiB, timeoutMs: config.ddTimeoutMs })
      if (t.diskCeiling) {
        // The disk without any page cache: 2 MiB reads, 8 in flight. A cold read through a filesystem whose
        // data is on this disk cannot beat it (null FUSE reads no disk at all).
        t.raw.diskRead = await fio({ filename: t.file, rw: 'read', bs: '2M', size: `${config.seqMiB}M`, runtime: config.quick ? 2 : 5, extra: ['--direct=1', '--ioengine=libaio', '--iodepth=8'] })
      }
      return r.MBps
    }
  },
  {
    key: 'seqReadWarmMBps',
    header: 'seq read, warm MB/s',
    digits: 0,
    async run (ctx, t) {
      return t.raw.seqReadWarm ? t.raw.seqReadWarm.MBps : null
    }
  },
  {
    key: 'diskReadMBps',
    header: 'disk read, O_DIRECT MB/s',
    digits: 0,
    async run (ctx, t) {
      return t.raw.diskRead ? t.raw.diskRead.MBps : null
    }
  },
  {
    key: 'sustainedWriteMBps',
    header: 'sustained write MB/s',
    digits: 0,
    async run (ctx, t) {
      const r = await ddRepeat({ src: ctx.src, dst: t.file, chunkMiB: config.seqMiB, times: config.sustainedTimes, timeoutMs: config.ddTimeoutMs })
      t.raw.sustainedWrite = r
      return r.MBps
    }
  },
  {
    key: 'randReadIops',
    header: 'rand 4K read IOPS',
    digits: 0,
    async run (ctx, t) {
      await dropCaches()
      const r = await fio({ filename: t.file, rw: 'randread', size: config.fioSize, runtime: config.fioRuntime })
      t.raw.randRead = r
      return r.iops
    }
  },
  {
    key: 'randWriteIops',
    header: 'rand 4K write IOPS',
    digits: 0,
    async run (ctx, t) {
      const r = await fio({ filename: t.file, rw: 'randwrite', size: config.fioSize, runtime: config.fioRuntime })
      t.raw.randWrite = r
      return r.iops
    }
  },
  {
    key: 'peakRssMiB',
    header: 'peak RSS MB',
    digits: 0,
    noRatio: false,
    once: true, // over the whole run: read after the last round
    async run (ctx, t) {
      return t.server ? await t.server.peakRssMiB() : null
    }
  }
]

// ---- sections --------------------------------------------------------------------------------
// Run after the targets, in order; each prints its own markdown tables.

export const SECTIONS = [snapshotSection, backupSection, sparseSection, fig6Section, databaseSection, imagesSection, replicateSection, scrubSection, workingsetSection, cephSection]

// ---- driver ----------------------------------------------------------------------------------

/** Mount (or make) one target; returns { def, result, t } with t null when it failed or was skipped. */
async function setupTarget (ctx, def) {
  // samples: each figure's values in the order measured; byRound / cpuByRound: the value and the server's CPU
  // seconds (all its threads) of each round, by round index, and place: the target's place in each round's
  // order, for figures compared in pairs (the checksums' cost)
  const result = { key: def.key, label: def.label, figures: {}, samples: {}, byRound: {}, cpuByRound: {}, place: [], errors: [], raw: {} }
  let t = null
  try {
    t = await def.setup(ctx)
    if (t.skip) {
      result.skipped = t.skip
      process.stderr.write(`   ${def.label}: skipped: ${t.skip}\n`)
      t = null
    } else t.raw = result.raw
  } catch (err) {
    result.errors.push(`setup: ${err.message}`)
    process.stderr.write(`   ${def.label}: setup failed: ${err.message}\n`)
    t = null
  }
  return { def, result, t }
}

async function teardownTarget (ctx, { def, result, t }) {
  if (!t) return
  if (t.server) await t.server.stop()
  if (t.mountpoint && await isMounted(t.mountpoint)) result.errors.push(`${t.mountpoint} still mounted after stop`)
  if (def.key === 'plain') await rm(t.file, { force: true })
  if (t.store) await rm(t.store, { recursive: true, force: true })
  if (def.key === 'qemu') await rm(path.join(ctx.dir, 'qemu.raw'), { force: true })
}

/** utime + stime of a process, all its threads, in seconds (null when it is gone). */
async function cpuSeconds (pid) {
  try {
    const f = (await readFile(`/proc/${pid}/stat`, 'utf8')).split(') ')[1].split(' ')
    return (Number(f[11]) + Number(f[12])) / 100 // fields 14 and 15 of stat(5), in clock ticks (USER_HZ = 100)
  } catch {
    return null
  }
}

/**
 * A target's daemon CPU seconds per unit of a figure's work, by round: the seq figures move a fixed number of
 * bytes (CPU seconds as they are), fio's run for a fixed time (CPU seconds per operation).
 */
function cpuPerWork (fig, r) {
  const cpu = r.cpuByRound[fig.key] ?? []
  if (!fig.key.startsWith('rand')) return cpu
  return cpu.map((c, i) => (c != null && r.byRound[fig.key]?.[i] ? c / r.byRound[fig.key][i] : null))
}

const median = (xs) => {
  const v = xs.filter((x) => x != null).sort((a, b) => a - b)
  if (!v.length) return null
  return v.length % 2 ? v[(v.length - 1) / 2] : (v[v.length / 2 - 1] + v[v.length / 2]) / 2
}

/**
 * All targets are mounted side by side and take turns: every figure is run once on each target before the
 * next figure, and the whole list `rounds` times, so that the machine's drift (its speed varies from minute
 * to minute) falls on every target alike. Each round starts one target further along the list, so that no
 * target always runs right after the same other one (on this VM a figure can depend on what the disk did
 * just before it). A figure is the median of its rounds.
 */
async function benchTargets (ctx, defs) {
  const all = []
  for (const def of defs) all.push(await setupTarget(ctx, def))
  const live = all.filter((x) => x.t)
  try {
    for (let round = 1; round <= config.rounds; round++) {
      process.stderr.write(`\n== round ${round} of ${config.rounds}\n`)
      const shift = (round - 1) % Math.max(1, live.length)
      const order = [...live.slice(shift), ...live.slice(0, shift)]
      order.forEach((x, i) => { x.result.place[round - 1] = i })
      for (const fig of FIGURES) {
        if (fig.once && round < config.rounds) continue
        for (const { result, t } of order) {
          if (t.failed) continue
          if (t.server && t.server.exited()) {
            t.failed = true
            result.errors.push(`${fig.key}: server exited ${JSON.stringify(t.server.exited())}: ${t.server.output()}`)
            continue
          }
          const t0 = Date.now()
          const cpu0 = t.server ? await cpuSeconds(t.server.pid) : null
          let v = null
          try {
            v = await fig.run(ctx, t)
          } catch (err) {
            result.errors.push(`${fig.key} (round ${round}): ${err.message}`)
            process.stderr.write(`   ${result.label.padEnd(28)} ${fig.header.padEnd(22)}      ERROR: ${err.message.split('\n')[0]}\n`)
            continue
          }
          ;(result.samples[fig.key] ??= []).push(v)
          ;(result.byRound[fig.key] ??= [])[round - 1] = v
          const cpu1 = cpu0 != null ? await cpuSeconds(t.server.pid) : null
          if (cpu0 != null && cpu1 != null) (result.cpuByRound[fig.key] ??= [])[round - 1] = cpu1 - cpu0
          process.stderr.write(`   ${result.label.padEnd(28)} ${fig.header.padEnd(22)} ${fmt(v, fig.digits).padStart(10)}   (${((Date.now() - t0) / 1000).toFixed(1)} s)\n`)
        }
      }
    }
  } finally {
    for (const x of all) await teardownTarget(ctx, x)
  }
  for (const { result } of all) {
    for (const fig of FIGURES) if (!result.skipped) result.figures[fig.key] = median(result.samples[fig.key] ?? [])
  }
  return all.map((x) => x.result)
}

async function runSection (ctx, sec) {
  const res = { key: sec.key, title: sec.title, tables: [], figures: {}, notes: [], errors: [] }
  process.stderr.write(`\n== section: ${sec.title}\n`)
  const t0 = Date.now()
  try {
    const r = await sec.run(ctx, res)
    if (r && r.skipped) {
      res.skipped = r.skipped
      process.stderr.write(`   skipped: ${r.skipped}\n`)
    }
  } catch (err) {
    res.errors.push(err.message)
    process.stderr.write(`   ERROR: ${err.stack || err.message}\n`)
  }
  res.seconds = (Date.now() - t0) / 1000
  process.stderr.write(`   (${res.seconds.toFixed(0)} s)\n`)
  return res
}

function printSection (res) {
  console.log(`\n## ${res.title}${config.quick ? ' (quick: sizes / 16)' : ''}`)
  if (res.skipped) console.log(`\n- skipped (${res.skipped})`)
  for (const t of res.tables) {
    console.log(`\n### ${t.title}\n`)
    console.log(markdownTable(t.headers, t.rows))
  }
  for (const n of res.notes) console.log(`\n- ${n}`)
  for (const e of res.errors) console.log(`\n- ERROR ${e}`)
}

function printResults (results) {
  if (!results.length) return {}
  const measured = results.filter((r) => !r.skipped)
  const headers = ['target', ...FIGURES.map((f) => f.header)]
  const rows = measured.map((r) => [r.label, ...FIGURES.map((f) => fmt(r.figures[f.key], f.digits))])
  console.log(`\n### Results (${config.quick ? 'quick: ' : ''}seq ${config.seqMiB} MiB, sustained ` +
    `${(config.seqMiB * config.sustainedTimes / 1024).toFixed(2)} GiB, fio ${config.fioRuntime} s, ${config.fioSize}; ` +
    `median of ${config.rounds} round${config.rounds > 1 ? 's' : ''}, targets taking turns)\n`)
  console.log(markdownTable(headers, rows))

  /** Each other target's figures as ratios to `baseKey`'s; returns them by target key (null when absent). */
  const ratioTable = (baseKey, title, keep = () => true) => {
    const base = results.find((r) => r.key === baseKey && !r.skipped)
    if (!base) return null
    const out = {}
    const ratioRows = measured.filter((r) => r.key !== baseKey && keep(r)).map((r) => {
      out[r.key] = {}
      return [r.label, ...FIGURES.map((f) => {
        const a = r.figures[f.key]
        const b = base.figures[f.key]
        const q = a == null || !b ? null : a / b
        out[r.key][f.key] = q
        return q == null ? '–' : `${fmt(q, 2)}×`
      })]
    })
    if (ratioRows.length) {
      console.log(`\n### ${title}\n`)
      console.log(markdownTable(headers, ratioRows))
    }
    return out
  }
  const ratios = ratioTable('null', 'Ratio to null FUSE (higher is better, except peak RSS)') ?? {}
  // The passthrough reads and writes the disk once per request and keeps nothing: for the FUSE targets, what
  // their own work costs over that (above 1×: caching or writing behind beats it).
  const toPass = ratioTable('pass', 'Ratio to the passthrough FUSE filesystem (each request one O_DIRECT read or write of a plain file)', (r) => r.key !== 'plain' && r.key !== 'null')
  if (toPass) ratios.toPassthrough = toPass
  const disk = results.find((r) => r.key === 'plain' && !r.skipped)?.figures.diskReadMBps
  if (disk) {
    const rows = measured.filter((r) => r.figures.seqReadMBps != null).map((r) => [r.label, fmt(r.figures.seqReadMBps), `${fmt(r.figures.seqReadMBps / disk, 2)}×`])
    console.log(`\n### Cold read against the disk itself (the plain file read with O_DIRECT: ${fmt(disk)} MB/s)\n`)
    console.log(markdownTable(['target', 'seq read, cold MB/s', '× disk'], rows))
  }
  const on = results.find((r) => r.key === 'vdiskfs' && !r.skipped)
  const off = results.find((r) => r.key === 'vdiskfs-nosums' && !r.skipped)
  if (on && off) {
    const keys = ['seqWriteMBps', 'seqReadMBps', 'sustainedWriteMBps', 'randReadIops', 'randWriteIops']
    const figs = FIGURES.filter((f) => keys.includes(f.key))
    const x = (q) => (q == null ? '–' : `${fmt(q, 2)}×`)
    // Per round, the two targets ran the figure one right after the other: the ratio of each such pair is
    // less exposed to the machine's drift than the ratio of two medians taken over minutes. But on this VM
    // the second of two writers in a row often writes faster (README, *Block checksums*), so the pairs are
    // taken apart by which target went first, and the figure is the geometric mean of the two groups'
    // medians: an order effect that multiplies one group divides the other.
    const pairs = (a, b) => (a ?? []).map((v, i) => (v != null && b?.[i] ? { q: v / b[i], first: on.place[i] < off.place[i] } : null)).filter(Boolean)
    const balanced = (ps) => {
      const a = median(ps.filter((p) => p.first).map((p) => p.q))
      const b = median(ps.filter((p) => !p.first).map((p) => p.q))
      return a != null && b != null ? Math.sqrt(a * b) : median(ps.map((p) => p.q))
    }
    const group = (ps, first) => ps.filter((p) => p.first === first).map((p) => fmt(p.q, 2)).join(' ') || '–'
    const pairsOf = (f) => pairs(on.byRound[f.key], off.byRound[f.key])
    const cpuOf = (f) => pairs(cpuPerWork(f, on), cpuPerWork(f, off))
    const rows = [
      ['with / without, medians of the rounds', ...figs.map((f) => x(on.figures[f.key] == null || !off.figures[f.key] ? null : on.figures[f.key] / off.figures[f.key]))],
      ['with / without, the rounds\' pairs, either order (geometric mean of the two orders\' medians)', ...figs.map((f) => x(balanced(pairsOf(f))))],
      ['… pairs with checksums first', ...figs.map((f) => group(pairsOf(f), true))],
      ['… pairs with checksums second', ...figs.map((f) => group(pairsOf(f), false))],
      ['daemon CPU per unit of work, with / without (pairs, either order)', ...figs.map((f) => x(balanced(cpuOf(f))))]
    ]
    ratios.checksums = Object.fromEntries(figs.map((f) => [f.key, { medians: on.figures[f.key] / off.figures[f.key], pairs: pairsOf(f), balanced: balanced(pairsOf(f)), cpuPerWork: cpuOf(f), cpuBalanced: balanced(cpuOf(f)) }]))
    console.log(`\n### The cost of block checksums: vdiskfs with checksums / without (same run, ${config.rounds} rounds)\n`)
    console.log(markdownTable(['', ...figs.map((f) => f.header)], rows))
  }
  for (const r of results) if (r.skipped) console.log(`\n- ${r.label}: skipped (${r.skipped})`)
  for (const r of results) for (const e of r.errors) console.log(`\n- ${r.label}: ERROR ${e}`)
  return ratios
}

export async function main () {
  installSignalCleanup()
  const known = [...TARGETS, ...SECTIONS].map((t) => t.key)
  const unknown = config.only.filter((k) => !known.includes(k))
  if (unknown.length) throw new Error(`unknown BENCH_ONLY key(s): ${unknown.join(', ')} (known: ${known.join(', ')})`)
  for (const tool of ['dd', 'fio', await fusermountCommand()]) {
    if (!(await which(tool))) throw new Error(`${tool} not found: run scripts/setup.sh first`)
  }
  const dir = await mkdtemp(path.join(config.baseDir, 'vdiskfs-bench-'))
  // sections add theirs (ctx.mountpoints) as they mount
  const mountpoints = ['mnt-null', 'mnt-vdiskfs', 'qemu-export'].map((m) => path.join(dir, m))
  onCleanup(async () => {
    // never rm -r through a live mount
    for (const mp of mountpoints) if (await isMounted(mp)) await unmount(mp)
    if (config.keep) return
    for (const mp of mountpoints) {
      if (await isMounted(mp)) {
        process.stderr.write(`${mp} is still mounted: leaving ${dir} in place\n`)
        return
      }
    }
    // maxRetries: an interrupted write may still land while the tree is removed (ENOTEMPTY)
    await rm(dir, { recursive: true, force: true, maxRetries: 5, retryDelay: 200 })
  })

  const ctx = { dir, src: path.join(dir, 'src.bin'), root: ROOT, config, mountpoints }
  process.stderr.write(`bench dir ${dir}; generating ${config.seqMiB} MiB of random source data...\n`)
  await makeRandomFile(ctx.src, config.seqMiB * MiB)

  const results = await benchTargets(ctx, TARGETS.filter((def) => config.only.includes(def.key)))
  if (aborting()) throw new Error('interrupted')
  const ratios = printResults(results)

  const sections = []
  for (const sec of SECTIONS) {
    if (!config.only.includes(sec.key)) continue
    if (aborting()) throw new Error('interrupted')
    const res = await runSection(ctx, sec)
    sections.push(res)
    printSection(res)
  }

  const kernel = (await run('uname', ['-r'], { check: false })).stdout.trim()
  const out = {
    date: new Date().toISOString(),
    machine: { node: process.version, kernel, cpus: os.cpus().length, cpuModel: os.cpus()[0]?.model, memGiB: os.totalmem() / GiB },
    config,
    results,
    ratiosToNull: ratios,
    sections: Object.fromEntries(sections.map((s) => [s.key, s]))
  }
  await writeFile(config.jsonOut, JSON.stringify(out, null, 2) + '\n')
  console.log(`\nresults written to ${config.jsonOut}`)
  return results.some((r) => r.errors.length) || sections.some((s) => s.errors.length) ? 1 : 0
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  let code = 1
  try {
    code = await main()
  } catch (err) {
    if (aborting()) console.error('bench: interrupted')
    else console.error(`bench: ${err.stack || err.message}`)
  } finally {
    await runCleanups()
  }
  process.exit(aborting() ? 130 : code)
}
