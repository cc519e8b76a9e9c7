// Bench section "snapshot": snapshot creation time vs data held, and the write cost of a snapshot.
//
// One vdiskfs mount (fresh store), four 16 GiB thin disks:
//   fresh   dd of U random MiB (U = 1024; quick 64), then U MiB of other random data over it (no snapshot)
//   d1      U MiB written, then 5 snapshots, then the region overwritten twice (first: held by the snapshots)
//   d8      8*U MiB written, then 5 snapshots
// Snapshot time is a `snapshot <disk> <snap>` line written to .vdisk/ctl, timed from this process
// (open + write + close of ctl), median of 5. Writes are dd bs=1M conv=notrunc,fsync.
import { rm } from 'node:fs/promises'
import path from 'node:path'
import { MiB, dd, ddRepeat, fmt, makeRandomFile, median } from './lib.mjs'
import { mountVdiskfs } from './vdisk.mjs'

const SNAPS = 5

export const snapshotSection = {
  key: 'snapshot',
  title: 'Snapshots',
  async run (ctx, res) {
    const { config } = ctx
    const U = config.seqMiB // 1 GiB (quick: 64 MiB)
    const ddOpts = { conv: 'notrunc,fsync', timeoutMs: config.ddTimeoutMs }
    const log = (s) => process.stderr.write(`   ${s}\n`)

    const src2 = path.join(ctx.dir, 'src2.bin') // different data for overwrites
    await makeRandomFile(src2, U * MiB)
    const m = await mountVdiskfs(ctx, 'snap')
    if (m.skip) return { skipped: m.skip }
    try {
      for (const d of ['fresh', 'd1', 'd8']) await m.create(d, '16G')

      // ---- write cost -------------------------------------------------------------------------
      const writes = {}
      const step = async (key, label, fn) => {
        m.checkAlive()
        try {
          const r = await fn()
          writes[key] = { label, ...r }
          log(`${label.padEnd(52)} ${fmt(r.MBps, 0).padStart(6)} MB/s`)
        } catch (err) {
          writes[key] = { label, error: err.message }
          res.errors.push(`${key}: ${err.message}`)
          log(`${label}: ERROR ${err.message.split('\n')[0]}`)
        }
      }
      await step('fresh', 'fresh disk, first write (no snapshot)', () => dd({ src: ctx.src, dst: m.diskFile('fresh'), count: U, ...ddOpts }))
      await step('overwrite', 'overwrite written region, no snapshot', () => dd({ src: src2, dst: m.diskFile('fresh'), count: U, ...ddOpts }))

      // ---- snapshot creation time ---------------------------------------------------------------
      log(`writing ${U} MiB to d1 and ${8 * U} MiB to d8...`)
      const fill1 = await dd({ src: ctx.src, dst: m.diskFile('d1'), count: U, ...ddOpts })
      const fill8 = await ddRepeat({ src: ctx.src, dst: m.diskFile('d8'), chunkMiB: U, times: 8, timeoutMs: config.ddTimeoutMs })
      const snaps = {}
      for (const [disk, written] of [['d1', U], ['d8', 8 * U]]) {
        const samples = []
        for (let i = 1; i <= SNAPS; i++) samples.push(await m.snapshot(disk, `s${i}`))
        snaps[disk] = { disk, writtenMiB: written, samplesMs: samples.map((s) => s * 1000), medianMs: median(samples) * 1000 }
        log(`snapshot of ${disk} (${written} MiB written): median ${fmt(snaps[disk].medianMs, 2)} ms ` +
          `[${samples.map((s) => fmt(s * 1000, 2)).join(', ')}]`)
      }

      // ---- redirect-on-write cost: d1's first U MiB are held by its 5 snapshots -----------------
      await step('overwriteHeld', 'overwrite region held by a snapshot (first time)', () => dd({ src: src2, dst: m.diskFile('d1'), count: U, ...ddOpts }))
      await step('overwriteHeldAgain', 'same region again (blocks now private)', () => dd({ src: ctx.src, dst: m.diskFile('d1'), count: U, ...ddOpts }))

      // ---- tables -----------------------------------------------------------------------------
      const r81 = snaps.d8 && snaps.d1 ? snaps.d8.medianMs / snaps.d1.medianMs : null
      res.tables.push({
        title: `Snapshot creation (\`snapshot <disk> <snap>\` written to .vdisk/ctl, timed from the bench process; median of ${SNAPS})`,
        headers: ['disk', 'data written', 'median ms', 'min ms', 'max ms', '× smaller case'],
        rows: ['d1', 'd8'].map((k) => {
          const s = snaps[k]
          return [`16 GiB thin disk, ${s.writtenMiB >= 1024 ? `${s.writtenMiB / 1024} GiB` : `${s.writtenMiB} MiB`} written`,
            `${s.writtenMiB} MiB`, fmt(s.medianMs, 2), fmt(Math.min(...s.samplesMs), 2), fmt(Math.max(...s.samplesMs), 2),
            k === 'd1' ? '1.00×' : `${fmt(r81, 2)}×`]
        })
      })
      const base = writes.fresh?.MBps
      const ow = writes.overwrite?.MBps
      const ratio = (a, b) => a && b ? `${fmt(a / b, 2)}×` : '–'
      res.tables.push({
        title: `Sequential write with and without a snapshot (dd ${U} MiB random data, bs=1M, conv=notrunc,fsync)`,
        headers: ['case', 'MB/s', 'seconds', '× fresh disk', '× overwrite, no snapshot'],
        rows: Object.values(writes).map((w) => [w.label, w.error ? 'ERROR' : fmt(w.MBps, 0), fmt(w.seconds, 2),
          ratio(w.MBps, base), ratio(w.MBps, ow)])
      })
      res.figures = {
        snapshotMs: { d1: snaps.d1, d8: snaps.d8, ratio8to1: r81 },
        writeMBps: Object.fromEntries(Object.entries(writes).map(([k, w]) => [k, w.MBps ?? null])),
        writeRatioToFresh: Object.fromEntries(Object.entries(writes).map(([k, w]) => [k, w.MBps && base ? w.MBps / base : null])),
        raw: { writes, fill1, fill8 },
        peakRssMiB: await m.server.peakRssMiB()
      }
      res.notes.push(`filling d8 (${8 * U} MiB, dd back to back) ran at ${fmt(fill8.MBps, 0)} MB/s; server peak RSS ${fmt(res.figures.peakRssMiB, 0)} MiB`)
    } finally {
      await m.stop()
      await rm(src2, { force: true })
    }
    return res
  }
}
