// Bench section "images": backup images used without restoring them (attach, merge).
//
// Data: a 4 GiB disk (quick 512 MiB), U MiB (1024; quick 64) of random data written sequentially, snapshot
// s1; then 10% of those 64 KiB blocks (seeded, scattered) overwritten, snapshot s2. The full image of s1 and
// the delta s1..s2 are copied out with dd, then attached (`attach a FULL DELTA`), so .vdisk/attached/a reads
// exactly as .vdisk/snapshots/im/s2. Compared, the two files taking turns, page cache dropped before each:
//   rand 4K read    fio randread 4 KiB over the U MiB written (IOPS)
//   seq read        dd bs=1M of the U MiB written (MB/s)
// and, offline, `vdiskfs merge FULL DELTA -o OUT` against `cat FULL DELTA > /dev/null` (reading its inputs).
// Medians of config.rounds rounds.
import { mkdir, rm } from 'node:fs/promises'
import path from 'node:path'
import process from 'node:process'
import { MiB, dd, dropCaches, fileSize, fio, fmt, median, mulberry32, run } from './lib.mjs'
import { mountVdiskfs, writeChunks } from './vdisk.mjs'

const BLOCK = 64 * 1024

export const imagesSection = {
  key: 'images',
  title: 'Images without restoring (attach, merge)',
  async run (ctx, res) {
    const { config } = ctx
    const U = config.seqMiB
    const log = (s) => process.stderr.write(`   ${s}\n`)
    const work = path.join(ctx.dir, 'images-work')
    await mkdir(work, { recursive: true })
    const m = await mountVdiskfs(ctx, 'images')
    if (m.skip) return { skipped: m.skip }
    const full = path.join(work, 'full.vdimg')
    const delta = path.join(work, 'delta.vdimg')
    const merged = path.join(work, 'merged.vdimg')
    const rows = []
    try {
      await m.create('im', config.quick ? '512M' : '4G')
      await dd({ src: ctx.src, dst: m.diskFile('im'), count: U, conv: 'notrunc,fsync', timeoutMs: config.ddTimeoutMs })
      await m.snapshot('im', 's1')
      const rnd = mulberry32(7)
      const n = (U * MiB) / BLOCK
      const chosen = new Set()
      while (chosen.size < Math.round(n / 10)) chosen.add(Math.floor(rnd() * n))
      await writeChunks([m.diskFile('im')], [...chosen].sort((a, b) => a - b).map((b) => b * BLOCK), BLOCK)
      await m.snapshot('im', 's2')
      await dd({ src: path.join(m.vdisk, 'copies/im/s1'), dst: full, conv: 'fsync', timeoutMs: config.ddTimeoutMs })
      await dd({ src: path.join(m.vdisk, 'deltas/im/s1..s2'), dst: delta, conv: 'fsync', timeoutMs: config.ddTimeoutMs })
      await m.control(`attach a ${full} ${delta}`)
      const files = { attached: path.join(m.vdisk, 'attached/a'), snapshot: path.join(m.vdisk, 'snapshots/im/s2') }
      const got = { attached: { rand: [], seq: [] }, snapshot: { rand: [], seq: [] } }
      for (let r = 0; r < config.rounds; r++) {
        for (const [k, f] of Object.entries(files)) {
          await dropCaches()
          const fr = await fio({ filename: f, rw: 'randread', bs: '4k', size: `${U}M`, runtime: config.fioRuntime })
          got[k].rand.push(fr.iops)
          await dropCaches()
          const s = await dd({ src: f, dst: '/dev/null', count: U, timeoutMs: config.ddTimeoutMs })
          got[k].seq.push(s.MBps)
          log(`round ${r + 1} ${k}: rand 4K ${fmt(fr.iops)} IOPS, seq ${fmt(s.MBps)} MB/s`)
        }
      }
      const a = { rand: median(got.attached.rand), seq: median(got.attached.seq) }
      const s = { rand: median(got.snapshot.rand), seq: median(got.snapshot.seq) }
      rows.push(['rand 4K read (IOPS)', fmt(a.rand), fmt(s.rand), fmt(a.rand / s.rand, 2)])
      rows.push(['seq read, dd bs=1M (MB/s)', fmt(a.seq), fmt(s.seq), fmt(a.seq / s.seq, 2)])
      res.tables.push({ title: `Attached image chain (full + 10% delta) vs the same snapshot in the store, ${U} MiB of data, medians of ${config.rounds}`, headers: ['figure', 'attached', 'snapshot', 'ratio'], rows })
      res.figures.attachedRandIops = a.rand
      res.figures.attachedRandRatio = a.rand / s.rand
      res.figures.attachedSeqRatio = a.seq / s.seq
      await m.control('detach a')

      // ---- merge, offline -------------------------------------------------------------------------
      const inputs = (await fileSize(full)) + (await fileSize(delta))
      const mt = []
      const ct = []
      for (let r = 0; r < config.rounds; r++) {
        await dropCaches()
        const c = await run('bash', ['-c', `cat '${full}' '${delta}' > /dev/null`], { timeoutMs: config.ddTimeoutMs })
        ct.push(c.seconds)
        await dropCaches()
        await rm(merged, { force: true })
        const mr = await run(process.execPath, [m.cli, 'merge', full, delta, '-o', merged], { timeoutMs: config.ddTimeoutMs })
        mt.push(mr.seconds)
        log(`round ${r + 1}: merge ${fmt(mr.seconds, 2)} s, cat of the inputs ${fmt(c.seconds, 2)} s`)
      }
      const v = await run(process.execPath, [m.cli, 'verify', merged], { check: false })
      if (v.code !== 0) res.errors.push(`merged image does not verify: ${v.stderr}`)
      const mergeMBps = inputs / 1e6 / median(mt)
      const catMBps = inputs / 1e6 / median(ct)
      res.tables.push({
        title: `Merge of a full image and a delta (${fmt(inputs / MiB)} MiB of input), medians of ${config.rounds}`,
        headers: ['operation', 's', 'input MB/s', 'ratio'],
        rows: [
          ['`vdiskfs merge FULL DELTA -o OUT`', fmt(median(mt), 2), fmt(mergeMBps), fmt(mergeMBps / catMBps, 2)],
          ['`cat FULL DELTA > /dev/null`', fmt(median(ct), 2), fmt(catMBps), '1.00']
        ]
      })
      res.figures.mergeRatio = mergeMBps / catMBps
    } finally {
      await m.stop()
      await rm(work, { recursive: true, force: true })
    }
  }
}
