// Bench section "backup": the compacted copy (.vdisk/copies/<disk>/<snap>) against the alternatives, on the
// same data, plus restore, plus the claim that a copy's cost follows the data held, not the virtual size.
//
// Data: a thin disk of V virtual bytes (8 GiB; quick 512 MiB), 64 KiB blocks. A seeded random 20% of the
// 64 KiB block positions (scattered single blocks, not runs; seed 1) get 64 KiB of random data each, written
// with async positional writes into the disk file AND, at the same offsets, into a sparse raw file on the
// plain filesystem (the input for qemu-img). Then `snapshot bk s1`. Compared (page cache dropped before each):
//   dd if=.vdisk/copies/bk/s1 of=OUT bs=1M conv=fsync                     the compacted copy
//   qemu-img convert -O qcow2 RAW OUT.qcow2 / -O raw RAW OUT.raw           same data from the sparse raw file
//   dd if=.vdisk/snapshots/bk/s1 of=FULL bs=1M conv=fsync                 the full-size snapshot file
//   dd if=OUT of=.vdisk/import/r1 bs=1M                                   restore through the mount
//   node dist/cli/main.js restore OUT --as r2 --store S                   the CLI (goes through import/)
// Times are wall clock of the child process. "used-data MB/s" = bytes of data written / seconds.
// Both restored disks are compared with the raw file (cmp) afterwards.
//
// Scaling: 1 GiB of random data (quick 64 MiB) as 1 MiB pieces spread evenly over a 1 TiB disk (quick
// 64 GiB), and contiguously on a disk of exactly that size; snapshot both; dd both copies.
import { randomFillSync } from 'node:crypto'
import { mkdir, open, rm } from 'node:fs/promises'
import path from 'node:path'
import process from 'node:process'
import {
  GiB, MiB, allocatedBytes, dd, dropCaches, exists, fileSize, fmt, fmtBytes, run, waitFor, which
} from './lib.mjs'
import { hrSeconds, mountVdiskfs, writeChunks } from './vdisk.mjs'
import { mulberry32 } from './lib.mjs'

const BLOCK = 64 * 1024
const FRACTION = 0.2
const SEED = 1

/** Seeded sample of k of n block indices, sorted. */
function samplePositions (n, k, seed) {
  const rnd = mulberry32(seed)
  const idx = new Uint32Array(n)
  for (let i = 0; i < n; i++) idx[i] = i
  for (let i = 0; i < k; i++) { // partial Fisher-Yates
    const j = i + Math.floor(rnd() * (n - i))
    const t = idx[i]; idx[i] = idx[j]; idx[j] = t
  }
  return Array.from(idx.subarray(0, k)).sort((a, b) => a - b)
}

export const backupSection = {
  key: 'backup',
  title: 'Backup (compacted copy)',
  async run (ctx, res) {
    const { config } = ctx
    const log = (s) => process.stderr.write(`   ${s}\n`)
    const virt = config.quick ? 512 * MiB : 8 * GiB
    const nBlocks = virt / BLOCK
    const nUsed = Math.round(nBlocks * FRACTION)
    const used = nUsed * BLOCK
    const work = path.join(ctx.dir, 'backup-work')
    await mkdir(work, { recursive: true })
    const raw = path.join(work, 'source.raw')
    const out = path.join(work, 'copy.img')
    const qemuImg = await which('qemu-img')

    const m = await mountVdiskfs(ctx, 'backup')
    if (m.skip) return { skipped: m.skip }
    const rows = {} // key -> { label, seconds, size, allocated, error? , note? }
    try {
      // ---- data ----------------------------------------------------------------------------
      await m.create('bk', String(virt))
      await run('truncate', ['-s', String(virt), raw])
      const positions = samplePositions(nBlocks, nUsed, SEED).map((i) => i * BLOCK)
      log(`writing ${nUsed} random 64 KiB blocks (${fmtBytes(used)}, ${FRACTION * 100}% of ${fmtBytes(virt)}) to the disk and to ${path.basename(raw)}...`)
      let t0 = process.hrtime.bigint()
      await writeChunks([m.diskFile('bk'), raw], positions, BLOCK)
      log(`  written in ${hrSeconds(t0).toFixed(1)} s`)
      await m.snapshot('bk', 's1')
      const copyFile = path.join(m.vdisk, 'copies', 'bk', 's1')
      const snapFile = path.join(m.vdisk, 'snapshots', 'bk', 's1')

      const measure = async (key, label, fn, outFile, { keep = false } = {}) => {
        m.checkAlive()
        await dropCaches()
        try {
          const r = await fn()
          const row = { label, seconds: r.seconds, ...(r.note ? { note: r.note } : {}) }
          if (outFile && await exists(outFile)) {
            row.size = await fileSize(outFile)
            row.allocated = await allocatedBytes(outFile)
            if (!keep) await rm(outFile, { force: true })
          }
          rows[key] = row
          log(`${label.padEnd(44)} ${r.seconds.toFixed(2).padStart(8)} s  ${fmtBytes(row.size).padStart(10)}`)
        } catch (err) {
          rows[key] = { label, error: err.message }
          res.errors.push(`${key}: ${err.message}`)
          log(`${label}: ERROR ${err.message.split('\n')[0]}`)
        }
      }
      const ddWall = async (o) => {
        const r = await dd({ bs: '1M', timeoutMs: config.ddTimeoutMs, ...o })
        return { seconds: r.wallSeconds, bytes: r.bytes }
      }
      const timed = async (cmd, args) => {
        const r = await run(cmd, args, { timeoutMs: config.ddTimeoutMs })
        return { seconds: r.seconds }
      }

      // ---- backups -------------------------------------------------------------------------
      await measure('copy', 'vdiskfs: dd copies/bk/s1', () => ddWall({ src: copyFile, dst: out, conv: 'fsync' }), out, { keep: true })
      if (qemuImg) {
        await measure('qcow2', 'qemu-img convert -O qcow2 (sparse raw)', () => timed(qemuImg, ['convert', '-O', 'qcow2', raw, path.join(work, 'out.qcow2')]), path.join(work, 'out.qcow2'))
        await measure('qraw', 'qemu-img convert -O raw (sparse raw)', () => timed(qemuImg, ['convert', '-O', 'raw', raw, path.join(work, 'out.raw')]), path.join(work, 'out.raw'))
      } else {
        res.notes.push('qemu-img not on PATH: the qemu-img rows are skipped (scripts/setup.sh --bench installs qemu-utils)')
        rows.qcow2 = { label: 'qemu-img convert -O qcow2 (sparse raw)', skipped: 'qemu-img missing' }
        rows.qraw = { label: 'qemu-img convert -O raw (sparse raw)', skipped: 'qemu-img missing' }
      }
      await measure('full', 'dd full snapshot file snapshots/bk/s1', () => ddWall({ src: snapFile, dst: path.join(work, 'full.img'), conv: 'fsync' }), path.join(work, 'full.img'))

      // ---- restores ------------------------------------------------------------------------
      if (rows.copy && !rows.copy.error) {
        await measure('restoreDd', 'restore: dd OUT of=.vdisk/import/r1', async () => {
          const r = await ddWall({ src: out, dst: path.join(m.vdisk, 'import', 'r1') })
          await waitFor(() => exists(m.diskFile('r1')), 10_000, 50, 'r1 to appear')
          return r
        })
        await measure('restoreCli', 'restore: vdiskfs restore OUT --as r2', async () => {
          const r = await timed(process.execPath, [m.cli, 'restore', out, '--as', 'r2', '--store', m.store])
          await waitFor(() => exists(m.diskFile('r2')), 10_000, 50, 'r2 to appear')
          return r
        })
        for (const [key, disk] of [['restoreDd', 'r1'], ['restoreCli', 'r2']]) {
          if (rows[key].error) continue
          // the restored disk: apparent size and what it allocates (st_blocks as vdiskfs reports it)
          rows[key].size = await fileSize(m.diskFile(disk))
          rows[key].allocated = await allocatedBytes(m.diskFile(disk))
          const c = await run('cmp', [raw, m.diskFile(disk)], { check: false, timeoutMs: config.ddTimeoutMs })
          rows[key].verified = c.code === 0
          if (c.code !== 0) res.errors.push(`${key}: restored disk ${disk} differs from the source data: ${(c.stdout + c.stderr).trim()}`)
          log(`cmp source.raw ${disk}: ${c.code === 0 ? 'identical' : 'DIFFERENT ' + (c.stdout + c.stderr).trim()}`)
        }
      }
      await rm(out, { force: true })
      await rm(raw, { force: true })

      const full = rows.full && !rows.full.error ? rows.full.seconds : null
      const tableRows = Object.values(rows).map((r) => {
        if (r.skipped) return [r.label, `skipped: ${r.skipped}`, '–', '–', '–', '–']
        if (r.error) return [r.label, 'ERROR', '–', '–', '–', '–']
        const check = r.verified === undefined ? '' : r.verified ? ' (cmp ok)' : ' (DIFFERS)'
        return [r.label + check, fmt(r.seconds, 2), r.size === undefined ? '–' : fmtBytes(r.size),
          r.allocated === undefined ? '–' : fmtBytes(r.allocated), fmt(used / 1e6 / r.seconds, 0),
          full ? `${fmt(full / r.seconds, 2)}×` : '–']
      })
      res.tables.push({
        title: `Backup of one snapshot: ${fmtBytes(virt)} virtual disk, ${fmtBytes(used)} used (${nUsed} scattered 64 KiB blocks at seeded random positions, ${FRACTION * 100}%); ` +
          'vdiskfs rows read through the mount, qemu-img rows read the same data from a sparse raw file on the plain filesystem; page cache dropped before each; wall-clock seconds',
        headers: ['method', 'seconds', 'output size (restores: disk)', 'allocated', 'used-data MB/s', 'speed-up vs full dd'],
        rows: tableRows
      })

      // ---- scaling ---------------------------------------------------------------------------
      const heldMiB = config.seqMiB
      const bigVirt = config.quick ? 64 * GiB : 1024 * GiB
      await m.create('big', String(bigVirt))
      await m.create('small', String(heldMiB * MiB))
      const srcFh = await open(ctx.src, 'r')
      try {
        const fillFromSrc = (stride) => async (buf, pos) => {
          const { bytesRead } = await srcFh.read(buf, 0, MiB, (pos / stride) * MiB)
          if (bytesRead !== MiB) throw new Error(`short read of ${ctx.src}`)
        }
        const bigStride = bigVirt / heldMiB
        log(`writing ${heldMiB} MiB to 'big' (${fmtBytes(bigVirt)}, 1 MiB every ${fmtBytes(bigStride)}) and to 'small' (${heldMiB} MiB, contiguous)...`)
        await writeChunks([m.diskFile('big')], Array.from({ length: heldMiB }, (_, i) => i * bigStride), MiB, { fill: fillFromSrc(bigStride) })
        await writeChunks([m.diskFile('small')], Array.from({ length: heldMiB }, (_, i) => i * MiB), MiB, { fill: fillFromSrc(MiB) })
      } finally {
        await srcFh.close()
      }
      await m.snapshot('big', 's1')
      await m.snapshot('small', 's1')
      const scale = {}
      for (const [key, label] of [['big', `${fmtBytes(bigVirt)} virtual, ${fmtBytes(heldMiB * MiB)} held (spread)`], ['small', `${fmtBytes(heldMiB * MiB)} virtual, ${fmtBytes(heldMiB * MiB)} held`]]) {
        m.checkAlive()
        await dropCaches()
        const o = path.join(work, `scale-${key}.img`)
        try {
          const r = await dd({ src: path.join(m.vdisk, 'copies', key, 's1'), dst: o, bs: '1M', conv: 'fsync', timeoutMs: config.ddTimeoutMs })
          scale[key] = { label, seconds: r.wallSeconds, size: await fileSize(o) }
          log(`copy of ${label}: ${r.wallSeconds.toFixed(2)} s, ${fmtBytes(scale[key].size)}`)
        } catch (err) {
          scale[key] = { label, error: err.message }
          res.errors.push(`scale ${key}: ${err.message}`)
        }
        await rm(o, { force: true })
      }
      const sBase = scale.small && !scale.small.error ? scale.small.seconds : null
      res.tables.push({
        title: 'Copy cost follows the data, not the virtual size (dd copies/<disk>/s1 of=OUT bs=1M conv=fsync, caches dropped)',
        headers: ['disk', 'seconds', 'image size', 'held-data MB/s', '× small disk time'],
        rows: Object.values(scale).map((s) => s.error
          ? [s.label, 'ERROR', '–', '–', '–']
          : [s.label, fmt(s.seconds, 2), fmtBytes(s.size), fmt(heldMiB * MiB / 1e6 / s.seconds, 0), sBase ? `${fmt(s.seconds / sBase, 2)}×` : '–'])
      })

      res.figures = {
        data: { virtualBytes: virt, blockBytes: BLOCK, usedBlocks: nUsed, usedBytes: used, layout: 'scattered single 64 KiB blocks, seeded random positions', seed: SEED },
        methods: Object.fromEntries(Object.entries(rows).map(([k, r]) => [k, {
          ...r,
          usedMBps: r.seconds ? used / 1e6 / r.seconds : null,
          speedupVsFullDd: r.seconds && full ? full / r.seconds : null
        }])),
        scaling: { heldBytes: heldMiB * MiB, bigVirtualBytes: bigVirt, ...scale, bigOverSmall: scale.big?.seconds && sBase ? scale.big.seconds / sBase : null },
        peakRssMiB: await m.server.peakRssMiB()
      }
      res.notes.push(`server peak RSS ${fmt(res.figures.peakRssMiB, 0)} MiB`)
    } finally {
      await m.stop()
      await rm(work, { recursive: true, force: true })
    }
    return res
  }
}
