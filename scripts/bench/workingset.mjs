// Bench section "workingset": random I/O over all of a large disk against the same over 1 GiB of it. Where each
// block's table entry is (pool offset, checksums) must be in memory for a request to be served without a
// LevelDB read; the daemon keeps them in a cache bounded by bytes (--table-cache, meta/table.ts). Until
// 2026-12-05 it held 100,000 entries, and random I/O over more blocks than that (6.25 GiB of 64 KiB blocks,
// 0.8 GiB of 8 KiB ones) ran ~8x slower. This section shows whether a working set costs anything.
//
// One vdiskfs mount (fresh store, default --table-cache): a disk of 64 KiB blocks with W GiB written (W = 8;
// quick 1) and a disk of 8 KiB blocks with W/4 GiB written (W/4 = 2; quick 1/4), both by dd. Per round, per
// disk: fio 8 KiB random writes and 4 KiB random reads (psync, buffered, BENCH fio runtime) over the first
// 1 GiB (quick 128 MiB) and over all that was written; the ratio all / 1 GiB. Medians of BENCH_ROUNDS. The
// status line of the table cache after the run (entries, bytes, share of lookups found in memory).
import { readFile } from 'node:fs/promises'
import path from 'node:path'
import { MiB, ddRepeat, fio, fmt, median } from './lib.mjs'
import { mountVdiskfs } from './vdisk.mjs'

const log = (s) => process.stderr.write(`   ${s}\n`)

export const workingsetSection = {
  key: 'workingset',
  title: 'Random I/O over a large working set (the table cache)',
  async run (ctx, res) {
    const { config } = ctx
    const quick = config.quick
    const bigMiB = (quick ? 1 : 8) * 1024
    const smallMiB = bigMiB / 4
    const regionMiB = quick ? 128 : 1024
    const runtime = config.fioRuntime
    const m = await mountVdiskfs(ctx, 'ws')
    if (m.skip) return { skipped: m.skip }
    const disks = [
      { key: 'b64', label: '64 KiB blocks', create: `${bigMiB / 1024 + 1}G`, MiB: bigMiB, bs: 64 * 1024 },
      { key: 'b8', label: '8 KiB blocks', create: `${Math.ceil(smallMiB / 1024) + 1}G block-size=8K`, MiB: smallMiB, bs: 8 * 1024 }
    ]
    const figures = {}
    try {
      for (const d of disks) {
        await m.create(d.key, d.create)
        log(`writing ${d.MiB} MiB into the disk of ${d.label}...`)
        const chunkMiB = Math.min(config.seqMiB, d.MiB)
        await ddRepeat({ src: ctx.src, dst: m.diskFile(d.key), chunkMiB, times: d.MiB / chunkMiB, timeoutMs: config.ddTimeoutMs })
        figures[d.key] = { write: { region: [], all: [] }, read: { region: [], all: [] } }
      }
      for (let round = 1; round <= config.rounds; round++) {
        for (const d of disks) {
          const f = figures[d.key]
          for (const [kind, rw, bs] of [['write', 'randwrite', '8k'], ['read', 'randread', '4k']]) {
            for (const [span, mib] of [['region', regionMiB], ['all', d.MiB]]) {
              const r = await fio({ filename: m.diskFile(d.key), rw, bs, size: `${mib}M`, runtime })
              f[kind][span].push(r.iops)
            }
            log(`round ${round}, ${d.label}, ${rw} ${bs}: ${fmt(f[kind].region.at(-1))} IOPS over ${regionMiB} MiB, ${fmt(f[kind].all.at(-1))} over ${d.MiB} MiB`)
          }
        }
      }
      const st = JSON.parse(await readFile(path.join(m.vdisk, 'status.json'), 'utf8')).tableCache
      const rows = []
      for (const d of disks) {
        const f = figures[d.key]
        const med = { write: { region: median(f.write.region), all: median(f.write.all) }, read: { region: median(f.read.region), all: median(f.read.all) } }
        res.figures[d.key] = { blocks: (d.MiB * MiB) / d.bs, ...med, raw: f }
        for (const kind of ['write', 'read']) {
          const x = med[kind]
          rows.push([`${d.label}, ${d.MiB / 1024} GiB written (${fmt((d.MiB * MiB) / d.bs)} blocks)`, kind === 'write' ? '8 KiB random writes' : '4 KiB random reads',
            fmt(x.region), fmt(x.all), x.region ? `${fmt(x.all / x.region, 2)}×` : '–'])
        }
      }
      res.figures.tableCache = st
      res.tables.push({
        title: `fio psync, buffered, ${runtime} s, over the first ${regionMiB} MiB and over all that was written (median of ${config.rounds})`,
        headers: ['disk', 'I/O', `IOPS over ${regionMiB} MiB`, 'IOPS over all', 'all / region'],
        rows
      })
      if (st) { // (a daemon from before 2026-12-05 does not report it)
        res.notes.push(`table cache after the run: ${fmt(st.entries)} entries, ${fmt(st.bytes / MiB, 1)} MiB of ${fmt(st.maxBytes / MiB)} MiB; ` +
          `${fmt((100 * st.found) / Math.max(1, st.lookups), 1)} % of ${fmt(st.lookups)} lookups found in memory`)
      }
      res.figures.peakRssMiB = await m.server.peakRssMiB()
      res.notes.push(`server peak RSS ${fmt(res.figures.peakRssMiB, 0)} MiB`)
    } finally {
      await m.stop()
    }
    return res
  }
}
