// Bench section "database": what a database or a VM on a disk sees, each figure against the same on a plain
// file of the filesystem the store lives on, measured in the same run (vdiskfs and plain take turns, medians
// of config.rounds):
//   fsync    fio 8 KiB random overwrites, psync, --fsync=1 (each write followed by fsync), over a region
//            written first (2 GiB; quick 128 MiB): IOPS and fsync latency p50/p99, disk file vs plain file,
//            and vs the passthrough FUSE filesystem (scripts/nullfs.mjs with a backing file: O_DIRECT writes,
//            fsync = fdatasync), the least any FUSE filesystem keeping its data on this disk pays; the three
//            take turns, in alternating order
//   cow      fio 8 KiB random writes (psync, buffered) over the same kind of region right after a new
//            snapshot of the disk, against the same with no snapshot (the snapshot is deleted after each
//            round, so every round starts from blocks the disk owns); plain file for scale. The same on a
//            disk of 8 KiB blocks (`block-size=8K`, the database's page: a first write after a snapshot
//            then replaces a whole block, copying nothing). The snapshot's delete after each run is timed (in a
//            note): what a backup's snapshot costs to drop after a database wrote under it
//   pgbench  PostgreSQL on ext4 on a loop device over a 20 GiB (quick 4 GiB) vdiskfs disk (default 64 KiB
//            blocks, and 8 KiB blocks), and over a plain sparse file of the same size: `pgbench -i -s 20` (quick 2) once each, then `pgbench -c 4 -j 2
//            -T 60` (quick 10) per round; TPS ratio. The three servers run side by side; after each run its
//            server takes a CHECKPOINT and the machine a sync, so no run pays for another's writeback
//   snaplat  snapshot creation (`snapshot` line to .vdisk/ctl, timed from this process) every 2 s during one
//            more vdiskfs pgbench run, with the other two servers stopped, and 20 while idle (after sync and
//            5 s): median, p99, max; the TPS of that run too. Between the snapshots, the baseline: a 200-byte
//            append + fdatasync of a file on the store's filesystem (what a synced append there waits for,
//            as LevelDB's synced batch is one; an append's fdatasync waits for a commit of ext4's journal)
// PostgreSQL runs as the `postgres` user (runuser); its directories are under the bench temp dir, which is
// made traversable (0711) for it. Skipped parts say why in the notes (no pgbench, not root, no postgres user).
import { chmod, mkdir, open, readdir, rm, writeFile } from 'node:fs/promises'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { MiB, ddRepeat, exists, fio, fmt, median, onCleanup, run, which } from './lib.mjs'
import { hrSeconds, mountVdiskfs, startNullfs } from './vdisk.mjs'

const log = (s) => process.stderr.write(`   ${s}\n`)
const pct = (xs, p) => {
  if (!xs.length) return null
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.min(s.length - 1, Math.ceil(p * s.length) - 1)]
}
const ratio = (a, b) => (a != null && b ? `${fmt(a / b, 2)}×` : '–')

/** fio 8 KiB random writes; with fsync, the fsync latency percentiles (µs) from fio's JSON too. */
async function fio8k (filename, sizeBytes, runtime, fsync) {
  const r = await fio({ filename, rw: 'randwrite', bs: '8k', size: `${sizeBytes / MiB}M`, runtime, extra: fsync ? ['--fsync=1'] : [] })
  const sync = r.job?.sync?.lat_ns
  return {
    iops: r.iops,
    writeP50Us: r.job?.write?.clat_ns?.percentile?.['50.000000'] / 1000,
    ...(fsync && sync?.N ? { syncP50Us: sync.percentile['50.000000'] / 1000, syncP99Us: sync.percentile['99.000000'] / 1000 } : {})
  }
}

/** Append 200 bytes to the open file `fh` and fdatasync it: ms. */
async function appendSynced (fh) {
  const t0 = process.hrtime.bigint()
  await fh.write(Buffer.alloc(200, 0x61))
  await fh.datasync()
  return hrSeconds(t0) * 1000
}

/** Debian keeps initdb and pg_ctl under /usr/lib/postgresql/<version>/bin, off PATH: the newest there. */
async function pgLibBin (name) {
  const versions = await readdir('/usr/lib/postgresql').catch(() => [])
  for (const v of versions.sort((a, b) => Number(b) - Number(a))) {
    const p = `/usr/lib/postgresql/${v}/bin/${name}`
    if (await exists(p)) return p
  }
  return null
}

async function pgBinaries () {
  const find = async (name) => (await which(name)) ?? (await pgLibBin(name))
  const b = { initdb: await find('initdb'), pgCtl: await find('pg_ctl'), pgbench: await find('pgbench') }
  if (!b.initdb || !b.pgCtl || !b.pgbench) return { skip: 'PostgreSQL (initdb, pg_ctl, pgbench) not installed: pgbench rows skipped' }
  if (process.getuid?.() !== 0) return { skip: 'not root (loop devices, runuser): pgbench rows skipped' }
  const id = await run('id', ['-u', 'postgres'], { check: false })
  if (id.code !== 0) return { skip: 'no `postgres` user: pgbench rows skipped' }
  return b
}

/**
 * ext4 on a loop device over `image`, PostgreSQL in it on `port`. Returns { pgbench(args), stop() }.
 * Every step registers its undo with onCleanup, so an abort at any point unwinds what was done.
 */
async function startPostgres (ctx, bins, name, image, port) {
  const as = (cmd, args, opts = {}) => run('runuser', ['-u', 'postgres', '--', cmd, ...args], opts)
  await run('mkfs.ext4', ['-q', '-F', '-E', 'nodiscard,lazy_itable_init=0,lazy_journal_init=0', image], { timeoutMs: 10 * 60_000 })
  const loop = (await run('losetup', ['--find', '--show', image])).stdout.trim()
  const detach = onCleanup(() => run('losetup', ['-d', loop], { check: false, duringCleanup: true }))
  const mnt = path.join(ctx.dir, `pg-${name}`)
  await mkdir(mnt, { recursive: true })
  await run('mount', [loop, mnt])
  const unmountExt4 = onCleanup(() => run('umount', ['-l', mnt], { check: false, duringCleanup: true }))
  await run('chown', ['postgres:postgres', mnt])
  await chmod(mnt, 0o700)
  const data = path.join(mnt, 'data')
  await as(bins.initdb, ['-D', data, '-A', 'trust', '-U', 'postgres'], { timeoutMs: 5 * 60_000 })
  const stopPg = onCleanup(() => as(bins.pgCtl, ['-D', data, 'stop', '-m', 'immediate', '-w'], { check: false, duringCleanup: true, timeoutMs: 60_000 }))
  await as(bins.pgCtl, ['-D', data, '-w', '-l', path.join(mnt, 'server.log'), '-o', `-p ${port} -k ${mnt} -c listen_addresses=''`, 'start'], { timeoutMs: 120_000 })
  const pgbench = (args, timeoutMs = 30 * 60_000) => as(bins.pgbench, ['-h', mnt, '-p', String(port), ...args, 'postgres'], { timeoutMs })
  // A CHECKPOINT through pgbench (no psql needed): the server's dirty pages reach the disk now, not during
  // the next target's run.
  const checkpointSql = path.join(mnt, 'checkpoint.sql')
  await writeFile(checkpointSql, 'CHECKPOINT;\n', { mode: 0o644 })
  return {
    pgbench,
    async checkpoint () {
      await pgbench(['-n', '-t', '1', '-f', checkpointSql], 5 * 60_000)
      await run('sync', [], { check: false })
    },
    async stop () {
      await stopPg()
      await unmountExt4()
      await detach()
    }
  }
}

/** TPS from pgbench's summary ("tps = 123.4 (without initial connection time)"). */
function parseTps (out) {
  const m = /tps = ([\d.]+) \(without initial connection time\)/.exec(out) ?? /tps = ([\d.]+)/.exec(out)
  if (!m) throw new Error(`cannot parse pgbench output: ${out.slice(-500)}`)
  return Number(m[1])
}

export const databaseSection = {
  key: 'database',
  title: 'Databases: fsync, small writes after a snapshot, pgbench, snapshots under load',
  async run (ctx, res) {
    const { config } = ctx
    const quick = config.quick
    const regionBytes = (quick ? 128 : 2048) * MiB
    const chunkMiB = Math.min(config.seqMiB, regionBytes / MiB)
    const fill = (dst) => ddRepeat({ src: ctx.src, dst, chunkMiB, times: regionBytes / MiB / chunkMiB, timeoutMs: config.ddTimeoutMs })
    const runtime = config.fioRuntime
    const rounds = config.rounds
    const figures = { fsync: { plain: [], pass: [], vdiskfs: [] }, cow: { plain: [], without: [], after: [], without8k: [], after8k: [] }, deleteS: { cow: [], cow8k: [] }, pgbench: { plain: [], vdiskfs: [], vdiskfs8k: [] } }
    const guard = async (key, fn) => {
      try {
        return await fn()
      } catch (err) {
        res.errors.push(`${key}: ${err.message}`)
        log(`${key}: ERROR ${err.message.split('\n')[0]}`)
        return null
      }
    }

    await chmod(ctx.dir, 0o711) // PostgreSQL (user postgres) reaches its directories under it
    const plainFile = path.join(ctx.dir, 'db-plain.bin')
    const probeFile = path.join(ctx.dir, 'append-probe') // the snapshot figure's baseline (snaplat)
    const m = await mountVdiskfs(ctx, 'db')
    if (m.skip) return { skipped: m.skip }
    const pgs = []
    try {
      // ---- fsync and cow ---------------------------------------------------------------------------
      // The passthrough is mounted for its own fsync runs only, afresh each time (its backing file keeps the
      // region). In the runs so far its rounds after the first ran at a third of round 1's IOPS, mounted
      // afresh or not, where by hand, in turns with vdiskfs, it never did (README, *Databases*): the rounds
      // are printed for that reason.
      const passBacking = path.join(ctx.dir, 'db-pass.bin')
      const mountPass = () => startNullfs({ root: ctx.root, mountpoint: path.join(ctx.dir, 'mnt-db-pass'), bytes: 2 * regionBytes, backing: passBacking, name: 'passthrough FUSE (database)' })
      const pass = await guard('passthrough FUSE', mountPass)
      await m.create('fs', `${2 * regionBytes / MiB}M`)
      await m.create('cow', `${2 * regionBytes / MiB}M`)
      await m.create('cow8k', `${2 * regionBytes / MiB}M block-size=8K`)
      log(`writing the ${regionBytes / MiB} MiB regions (plain file, disks fs, cow and cow8k)...`)
      await run('truncate', ['-s', String(2 * regionBytes), plainFile])
      for (const f of [plainFile, ...(pass ? [pass.file] : []), m.diskFile('fs'), m.diskFile('cow'), m.diskFile('cow8k')]) await fill(f)
      if (pass) await pass.server.stop()
      const fsyncTargets = [['plain', plainFile], ...(pass ? [['pass', pass.file]] : []), ['vdiskfs', m.diskFile('fs')]]
      for (let round = 1; round <= rounds; round++) {
        log(`round ${round} of ${rounds}`)
        for (const [key, file] of round % 2 ? fsyncTargets : [...fsyncTargets].reverse()) {
          await guard(`fsync ${key}`, async () => {
            const p = key === 'pass' ? await mountPass() : null
            try {
              figures.fsync[key].push(await fio8k(file, regionBytes, runtime, true))
            } finally {
              await p?.server.stop()
            }
          })
        }
        log(`fsync=1 8K: ${fsyncTargets.map(([key]) => figures.fsync[key].at(-1) && `${key} ${fmt(figures.fsync[key].at(-1).iops)} IOPS p50 ${fmt(figures.fsync[key].at(-1).syncP50Us)} µs`).filter(Boolean).join('; ')}`)
        await guard('cow plain', async () => figures.cow.plain.push(await fio8k(plainFile, regionBytes, runtime, false)))
        for (const [disk, without, after] of [['cow', 'without', 'after'], ['cow8k', 'without8k', 'after8k']]) {
          await guard(`${disk} without`, async () => figures.cow[without].push(await fio8k(m.diskFile(disk), regionBytes, runtime, false)))
          await guard(`${disk} after`, async () => {
            await m.snapshot(disk, `r${round}`)
            try {
              figures.cow[after].push(await fio8k(m.diskFile(disk), regionBytes, runtime, false))
            } finally {
              // timed: what dropping a backup's snapshot costs after the writes under it
              figures.deleteS[disk].push(await m.control(`delete-snapshot ${disk} r${round}`))
            }
          })
          const [w, a] = [figures.cow[without].at(-1), figures.cow[after].at(-1)]
          if (w && a) log(`8K randwrite, disk ${disk}: without snapshot ${fmt(w.iops)} IOPS, after a new snapshot ${fmt(a.iops)} IOPS`)
        }
      }
      await rm(plainFile, { force: true })
      await rm(passBacking, { force: true })
      for (const d of ['fs', 'cow', 'cow8k']) await m.control(`delete ${d}`)

      const med = (xs, k) => median(xs.map((x) => x[k]))
      const fsyncMedians = (xs) => ({ iops: med(xs, 'iops'), p50: med(xs, 'syncP50Us'), p99: med(xs, 'syncP99Us'), w: med(xs, 'writeP50Us') })
      const [fp, fv, fpass] = [figures.fsync.plain, figures.fsync.vdiskfs, figures.fsync.pass].map(fsyncMedians)
      // each round's vdiskfs p50 against the other two's of the same round (they ran minutes apart at most)
      const perRound = (key) => figures.fsync.vdiskfs.map((v, i) => figures.fsync[key][i] ? v.syncP50Us / figures.fsync[key][i].syncP50Us : null).filter((x) => x != null)
      res.tables.push({
        title: `fio 8 KiB random overwrites with --fsync=1 (psync, ${regionBytes / MiB} MiB region, ${runtime} s; median of ${rounds})`,
        headers: ['target', 'IOPS', 'write p50 µs', 'fsync p50 µs', 'fsync p99 µs', 'IOPS × plain', 'fsync p50 × plain', 'fsync p99 × plain', 'fsync p50 × passthrough'],
        rows: [['plain file', fp, true], ...(figures.fsync.pass.length ? [['passthrough FUSE (O_DIRECT, fdatasync)', fpass, false]] : []), ['vdiskfs disk', fv, false]].map(([label, f, base]) => [label, fmt(f.iops), fmt(f.w), fmt(f.p50), fmt(f.p99),
          base ? '1.00×' : ratio(f.iops, fp.iops), base ? '1.00×' : ratio(f.p50, fp.p50), base ? '1.00×' : ratio(f.p99, fp.p99), ratio(f.p50, fpass.p50)])
      })
      res.notes.push(`fsync p50, vdiskfs / plain file round by round: ${perRound('plain').map((x) => fmt(x, 2)).join(', ')}; vdiskfs / passthrough FUSE: ${perRound('pass').map((x) => fmt(x, 2)).join(', ')}`)
      const cw = Object.fromEntries(Object.entries(figures.cow).map(([k, xs]) => [k, med(xs, 'iops')]))
      res.tables.push({
        title: `fio 8 KiB random writes (psync, buffered, ${regionBytes / MiB} MiB region, ${runtime} s; median of ${rounds}), after a new snapshot vs without`,
        headers: ['case', 'IOPS', '× without snapshot', '× plain file'],
        rows: [['plain file', cw.plain, null], ['vdiskfs disk, no snapshot', cw.without, cw.without], ['vdiskfs disk, right after a new snapshot', cw.after, cw.without],
          ['vdiskfs disk of 8 KiB blocks, no snapshot', cw.without8k, cw.without8k], ['vdiskfs disk of 8 KiB blocks, right after a new snapshot', cw.after8k, cw.without8k]]
          .map(([label, v, base]) => [label, fmt(v), base == null ? '–' : ratio(v, base), ratio(v, cw.plain)])
      })
      const del = { cow: median(figures.deleteS.cow), cow8k: median(figures.deleteS.cow8k) } // null when no round ran
      res.notes.push(`delete-snapshot right after each "after a new snapshot" run (median, s): default disk ${fmt(del.cow, 2)} (rounds ${figures.deleteS.cow.map((x) => fmt(x, 2)).join(', ')}), disk of 8 KiB blocks ${fmt(del.cow8k, 2)}`)
      res.figures.fsync = { plain: fp, pass: fpass, vdiskfs: fv, p50Ratio: fp.p50 ? fv.p50 / fp.p50 : null, p50ToPass: fpass.p50 ? fv.p50 / fpass.p50 : null, raw: figures.fsync }
      res.figures.cow = { ...cw, afterToWithout: cw.without ? cw.after / cw.without : null, afterToWithout8k: cw.without8k ? cw.after8k / cw.without8k : null, deleteS: del, raw: figures.cow }

      // ---- pgbench ---------------------------------------------------------------------------------
      const bins = await pgBinaries()
      if (bins.skip) {
        res.notes.push(bins.skip)
        return res
      }
      const pgBytes = (quick ? 4 : 20) * 1024 * MiB
      const scale = quick ? 2 : 20
      const seconds = quick ? 10 : 60
      const plainImage = path.join(ctx.dir, 'pg-plain.img')
      await run('truncate', ['-s', String(pgBytes), plainImage])
      await m.create('pg', `${pgBytes / MiB}M`)
      await m.create('pg8k', `${pgBytes / MiB}M block-size=8K`)
      const targets = [
        { key: 'plain', label: 'ext4 on a plain sparse file', image: plainImage, port: 5441 },
        { key: 'vdiskfs', label: 'ext4 on a vdiskfs disk', image: m.diskFile('pg'), port: 5442 },
        { key: 'vdiskfs8k', label: 'ext4 on a vdiskfs disk of 8 KiB blocks', image: m.diskFile('pg8k'), port: 5443 }
      ]
      const init = {}
      for (const t of targets) {
        log(`${t.label}: mkfs.ext4, initdb, pgbench -i -s ${scale}...`)
        const pg = await guard(`pgbench setup ${t.key}`, () => startPostgres(ctx, bins, t.key, t.image, t.port))
        if (!pg) continue
        pgs.push(pg)
        t.pg = pg
        const r = await guard(`pgbench -i ${t.key}`, () => t.pg.pgbench(['-i', '-q', '-s', String(scale)]))
        if (r) init[t.key] = r.seconds
        else t.pg = null
      }
      const bench = (t) => guard(`pgbench ${t.key}`, async () => parseTps((await t.pg.pgbench(['-c', '4', '-j', '2', '-T', String(seconds)])).stdout))
      for (let round = 1; round <= rounds; round++) {
        for (const t of targets) {
          if (!t.pg) continue
          const tps = await bench(t)
          if (tps != null) figures.pgbench[t.key].push(tps)
          log(`pgbench round ${round}, ${t.label}: ${fmt(tps)} TPS`)
          // the three servers run side by side: what this one still has to write back must not fall into
          // the next one's run
          await guard(`checkpoint ${t.key}`, () => t.pg.checkpoint())
        }
      }
      const tps = Object.fromEntries(targets.map((t) => [t.key, median(figures.pgbench[t.key])]))
      const [tp, tv, tv8] = [tps.plain, tps.vdiskfs, tps.vdiskfs8k]
      // ---- snapshots under that load, and idle ---------------------------------------------------------
      const vd = targets[1]
      const underLoad = []
      let loadTps = null
      const idle = []
      const appendUnderLoad = []
      const appendIdle = []
      if (vd.pg) {
        const probe = await open(probeFile, 'a')
        const closeProbe = onCleanup(() => probe.close().catch(() => undefined))
        // only the server under test runs from here on: the snapshot figures are vdiskfs's under its load
        for (const t of targets) if (t !== vd && t.pg) await guard(`stop ${t.key}`, () => t.pg.stop())
        log(`pgbench on vdiskfs with a snapshot every 2 s...`)
        let done = false
        const taker = (async () => {
          await sleep(2000)
          for (let i = 0; !done; i++) {
            underLoad.push((await m.control(`snapshot pg load${i}`)) * 1000) // control() times open + write + close
            await sleep(1000)
            if (!done) appendUnderLoad.push(await appendSynced(probe))
            await sleep(1000)
          }
        })()
        loadTps = await bench(vd)
        done = true
        await guard('snapshots under load', () => taker)
        // Idle means idle: what PostgreSQL and ext4 still write back after the run reaches the disk first
        // (right after pgbench, the snapshots below measured that writeback, median 16-20 ms).
        await run('sync', [], { check: false })
        await sleep(5000)
        for (let i = 0; i < 20; i++) {
          const s = await guard('idle snapshot', () => m.control(`snapshot pg idle${i}`))
          if (s != null) idle.push(s * 1000)
          await sleep(50)
          appendIdle.push(await appendSynced(probe))
          await sleep(50)
        }
        for (let i = 0; i < underLoad.length; i++) await guard('delete snapshot', () => m.control(`delete-snapshot pg load${i}`))
        for (let i = 0; i < 20; i++) await guard('delete snapshot', () => m.control(`delete-snapshot pg idle${i}`))
        await closeProbe()
      }
      res.tables.push({
        title: `pgbench on ext4 on a loop device (PostgreSQL defaults; -i -s ${scale}, then -c 4 -j 2 -T ${seconds}; median of ${rounds})`,
        headers: ['target', 'pgbench -i s', 'TPS', 'TPS × plain'],
        rows: [
          ...targets.map((t) => [t.label, fmt(init[t.key], 1), fmt(tps[t.key]), t.key === 'plain' ? '1.00×' : ratio(tps[t.key], tp)]),
          ...(loadTps != null ? [[`${targets[1].label}, a snapshot every 2 s`, '', fmt(loadTps), ratio(loadTps, tp)]] : [])
        ]
      })
      const dist = (xs) => ({ n: xs.length, median: median(xs), p99: pct(xs, 0.99), max: xs.length ? Math.max(...xs) : null })
      const sl = { underLoad: dist(underLoad), idle: dist(idle), appendUnderLoad: dist(appendUnderLoad), appendIdle: dist(appendIdle) }
      res.tables.push({
        title: 'Snapshot creation (`snapshot` line to .vdisk/ctl, open + write + close timed from the bench process), and the baseline: a 200-byte append + fdatasync on the store\'s filesystem, between the snapshots',
        headers: ['when', 'what', 'n', 'median ms', 'p99 ms', 'max ms'],
        rows: [
          ['during pgbench (every 2 s)', 'snapshot', sl.underLoad],
          ['', 'append + fdatasync', sl.appendUnderLoad],
          ['idle (after sync and 5 s; every 100 ms)', 'snapshot', sl.idle],
          ['', 'append + fdatasync', sl.appendIdle]
        ].map(([when, what, d]) => [when, what, String(d.n), fmt(d.median, 1), fmt(d.p99, 1), fmt(d.max, 1)])
      })
      res.figures.pgbench = { init, plainTps: tp, vdiskfsTps: tv, ratio: tp ? tv / tp : null, vdiskfs8kTps: tv8, ratio8k: tp ? tv8 / tp : null, withSnapshotsTps: loadTps, raw: figures.pgbench }
      res.figures.snapshotMs = { ...sl, raw: { underLoad, idle, appendUnderLoad, appendIdle } }
      res.figures.peakRssMiB = await m.server.peakRssMiB()
      res.notes.push(`server peak RSS ${fmt(res.figures.peakRssMiB, 0)} MiB`)
    } finally {
      for (const pg of pgs) await pg.stop().catch((err) => res.errors.push(`postgres teardown: ${err.message}`))
      await m.stop()
      await rm(plainFile, { force: true })
      await rm(path.join(ctx.dir, 'pg-plain.img'), { force: true })
      await rm(probeFile, { force: true })
    }
    return res
  }
}
