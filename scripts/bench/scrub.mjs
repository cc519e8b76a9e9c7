// Bench section "scrub": how fast `scrub` reads a disk back against its checksums, as a share of the disk's
// own O_DIRECT read rate (issue 17).
//
// One vdiskfs mount (fresh store): a disk with U MiB of random data written by dd (U = 1024; quick 64),
// fsync'd, caches dropped; then `scrub d` through the control file, timed until status.json says it is
// done (polled every 50 ms). The disk itself: the same U MiB read from a plain file with fio, O_DIRECT, 2 MiB
// requests, 8 in flight. Median of BENCH_ROUNDS rounds, the two taking turns.
import { readFile, rm } from 'node:fs/promises'
import path from 'node:path'
import { MiB, dd, dropCaches, fio, fmt, median } from './lib.mjs'
import { hrSeconds, mountVdiskfs } from './vdisk.mjs'

export const scrubSection = {
  key: 'scrub',
  title: 'Scrub speed',
  async run (ctx, res) {
    const { config } = ctx
    const U = config.seqMiB
    const log = (s) => process.stderr.write(`   ${s}\n`)
    const m = await mountVdiskfs(ctx, 'scrub')
    if (m.skip) return { skipped: m.skip }
    const plain = path.join(ctx.dir, 'scrub-plain.img')
    const scrubs = []
    const disks = []
    try {
      await m.create('d', `${Math.max(2, Math.ceil(U / 1024) + 1)}G`)
      await dd({ src: ctx.src, dst: m.diskFile('d'), count: U, conv: 'notrunc,fsync', timeoutMs: config.ddTimeoutMs })
      await dd({ src: ctx.src, dst: plain, count: U, conv: 'fsync', timeoutMs: config.ddTimeoutMs })
      for (let round = 1; round <= config.rounds; round++) {
        await dropCaches()
        const t0 = process.hrtime.bigint()
        await m.control('scrub d')
        let st
        for (;;) {
          st = JSON.parse(await readFile(path.join(m.vdisk, 'status.json'), 'utf8')).checksums.scrub
          if (st?.finished) break
          m.checkAlive()
          await new Promise((r) => setTimeout(r, 50))
        }
        const s = hrSeconds(t0)
        const mbps = (st.blocks * (64 * 1024)) / s / 1e6
        scrubs.push(mbps)
        log(`round ${round}: scrub of ${U} MiB ${fmt(s, 2)} s, ${fmt(mbps)} MB/s (${st.summary})`)
        await dropCaches()
        const r = await fio({ filename: plain, rw: 'read', bs: '2M', size: `${U}M`, runtime: config.quick ? 2 : 5, extra: ['--direct=1', '--ioengine=libaio', '--iodepth=8'] })
        disks.push(r.MBps)
        log(`round ${round}: the disk, O_DIRECT 2 MiB × 8: ${fmt(r.MBps)} MB/s`)
      }
      const a = median(scrubs)
      const b = median(disks)
      res.figures.scrubMBps = a
      res.figures.diskReadMBps = b
      res.tables.push({
        title: `Scrub of ${U} MiB of data (median of ${config.rounds})`,
        headers: ['figure', 'MB/s', '× disk'],
        rows: [['`scrub d` (read back, checked against the checksums)', fmt(a), `${fmt(a / b, 2)}×`], ['the disk: plain file, fio O_DIRECT 2 MiB × 8', fmt(b), '1.00×']]
      })
    } finally {
      await rm(plain, { force: true })
      await m.stop()
    }
  }
}
