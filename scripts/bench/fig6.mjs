// Bench section "fig6": the specification's FIG. 6 (classic backup methods against the compacted copy, on the
// same data) and the copy/restore speed per used byte against qemu-img and against the disk itself.
// Run alone: BENCH_ONLY=fig6 npm run bench (BENCH_QUICK=1 shrinks it 8x; BENCH_ROUNDS rounds, medians;
// BENCH_FIG6_PARTS=A,B,C picks parts, default all; B's ext4 data set needs part A).
//
// Part A, FIG. 6. A thin disk of 4 GiB (quick 512 MiB, 64 KiB blocks) gets ext4 (mkfs.ext4, loop mount through
// the vdiskfs mount) and is filled with files of 1–8 MiB (seeded sizes, content taken from the bench's random
// source file at seeded offsets) to 20% of the disk, then `snapshot f6 p20`; then to 80%, `snapshot f6 p80`.
// For each fill, page cache dropped before each method, wall clock of the child:
//   tar   tar -cf OUT -C <ext4 mounted read-only from the snapshot file> .      file-by-file backup
//   full  dd if=.vdisk/snapshots/f6/pNN of=OUT bs=1M conv=fsync                 all-data raw dump (= 100)
//   copy  dd if=.vdisk/copies/f6/pNN of=OUT bs=1M conv=fsync                    the compacted copy
// Time and capacity (output bytes) are given relative to the full dump, as in FIG. 6.
//
// Part B, per used byte. Two data sets: "shuffled" (1 GiB, quick 128 MiB, of random 64 KiB blocks at seeded
// random positions of a 5 GiB disk, written in shuffled order, so a block's physical place in the pool is
// unrelated to its logical one; the same blocks at the same offsets in a sparse raw file on the plain
// filesystem) and "ext4" (the 80% ext4 disk of part A; its raw file is the full dump with its zeros dug out,
// fallocate -d). For each, rounds of (caches dropped before each):
//   copyNull    dd copies/<disk>/<snap> of=/dev/null bs=1M (what the mount delivers, no output file to write)
//   copy        dd copies/<disk>/<snap> of=OUT.vdimg bs=1M conv=fsync
//   backup      vdiskfs backup disk@snap -o OUT.vdimg (the CLI; through the mount)
//   floor       OUT.vdimg copied to another file by durable-copy.mjs: backup -o's own reader and writer over a
//               plain file, no FUSE (the least any tool pays to write these bytes durably here)
//   verify      vdiskfs verify OUT.vdimg
//   restore     dd if=OUT.vdimg of=.vdisk/import/<new> bs=1M (the disk is deleted again after each round)
//   restoreCli  vdiskfs restore OUT.vdimg --as <new>
//   qcow2 out   qemu-img convert -O qcow2 RAW OUT.qcow2
//   qcow2 back  qemu-img convert -O raw OUT.qcow2 BACK.raw
//   the same two with -t writeback: the output flushed at the end, as the vdiskfs rows that write a file
//               are (restores commit durably, backup -o fdatasyncs, dd has conv=fsync); qemu-img's default
//               for convert (-t unsafe) returns with the output still in the page cache
//   disk        fio O_DIRECT sequential read of the bench's random source file (dense, 1 GiB), 2 MiB x 8 in
//               flight: the disk's own rate
// MB/s = used bytes (the image's data, i.e. the allocated blocks) / seconds.
//
// Part C, live writes during a backup: dd of 1 GiB (quick 128 MiB) into another disk of the same mount
// (bs=1M conv=fsync), alone and while a copy of the shuffled snapshot is being read (dd, caches dropped).
import { randomFillSync } from 'node:crypto'
import { mkdir, open, rm } from 'node:fs/promises'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import process from 'node:process'
import {
  GiB, MiB, allocatedBytes, dd, dropCaches, exists, fileSize, fmt, fmtBytes, median, mulberry32, run, waitFor, which
} from './lib.mjs'
import { hrSeconds, mountVdiskfs, writeChunks } from './vdisk.mjs'

/** The floor row's copier (part B). */
const DURABLE_COPY = fileURLToPath(new URL('./durable-copy.mjs', import.meta.url))

const BLOCK = 64 * 1024

function shuffled (arr, seed) {
  const rnd = mulberry32(seed)
  const a = arr.slice()
  for (let i = a.length - 1; i > 0; i--) {
    const j = Math.floor(rnd() * (i + 1))
    const t = a[i]; a[i] = a[j]; a[j] = t
  }
  return a
}

/** Seeded k of n block indices (not sorted). */
function sample (n, k, seed) {
  const rnd = mulberry32(seed)
  const idx = new Uint32Array(n)
  for (let i = 0; i < n; i++) idx[i] = i
  for (let i = 0; i < k; i++) {
    const j = i + Math.floor(rnd() * (n - i))
    const t = idx[i]; idx[i] = idx[j]; idx[j] = t
  }
  return Array.from(idx.subarray(0, k))
}

/** Fill a mounted ext4 directory with files of 1–8 MiB until `bytes` more are written. */
async function fillFiles (dir, src, srcBytes, bytes, seed, startIndex) {
  const rnd = mulberry32(seed)
  const sfh = await open(src, 'r')
  let written = 0
  let i = startIndex
  try {
    const buf = Buffer.allocUnsafe(8 * MiB)
    while (written < bytes) {
      const size = Math.min(bytes - written, (1 + Math.floor(rnd() * 8)) * MiB - Math.floor(rnd() * 4096))
      const off = Math.floor(rnd() * Math.max(1, srcBytes - size))
      const { bytesRead } = await sfh.read(buf, 0, size, off)
      if (bytesRead < size) randomFillSync(buf, bytesRead, size - bytesRead)
      buf.writeUInt32LE(i, 0) // every file differs
      const sub = path.join(dir, `d${i % 16}`)
      await mkdir(sub, { recursive: true })
      const fh = await open(path.join(sub, `f${i}.bin`), 'w')
      try { await fh.write(buf, 0, size, 0) } finally { await fh.close() }
      written += size
      i++
    }
  } finally {
    await sfh.close()
  }
  return i
}

async function fioDirect (file, size) {
  const r = await run('fio', ['--name=disk', `--filename=${file}`, '--rw=read', '--bs=2M', '--iodepth=8', '--ioengine=libaio',
    '--direct=1', `--size=${size}`, '--output-format=json'], { timeoutMs: 20 * 60_000 })
  const j = JSON.parse(r.stdout.slice(r.stdout.indexOf('{')))
  const job = j.jobs[0].read
  return { seconds: job.runtime / 1000, MBps: job.bw_bytes / 1e6 }
}

export const fig6Section = {
  key: 'fig6',
  title: 'FIG. 6 and backup speed per used byte',
  async run (ctx, res) {
    const { config } = ctx
    const log = (s) => process.stderr.write(`   ${s}\n`)
    const q = config.quick
    const work = path.join(ctx.dir, 'fig6-work')
    await mkdir(work, { recursive: true })
    const qemuImg = await which('qemu-img')
    const rounds = config.rounds
    const srcBytes = await fileSize(ctx.src)
    const m = await mountVdiskfs(ctx, 'fig6')
    if (m.skip) return { skipped: m.skip }
    const ext4Mnt = path.join(work, 'ext4')
    await mkdir(ext4Mnt, { recursive: true })
    let ext4Mounted = false
    const ddOut = async (src, dst) => (await dd({ src, dst, bs: '1M', conv: 'fsync', timeoutMs: config.ddTimeoutMs })).wallSeconds
    const timed = async (cmd, args) => (await run(cmd, args, { timeoutMs: config.ddTimeoutMs })).seconds
    const cli = (args) => timed(process.execPath, [m.cli, ...args, '--store', m.store])
    const figures = { fig6: {}, perByte: {}, liveWrite: {} }
    try {
      const parts = (process.env.BENCH_FIG6_PARTS || 'A,B,C').split(',')
      // ---- part A: FIG. 6 --------------------------------------------------------------------------
      const virt = q ? 512 * MiB : 4 * GiB
      await m.create('f6', String(virt))
      const disk = m.diskFile('f6')
      await run('mkfs.ext4', ['-q', '-F', '-E', 'lazy_itable_init=0,lazy_journal_init=0', disk])
      let fileIndex = 0
      let filled = 0
      const fig6Rows = []
      for (const pct of parts.includes('A') ? [20, 80] : []) {
        await run('mount', ['-o', 'loop', disk, ext4Mnt])
        ext4Mounted = true
        const target = Math.round(virt * pct / 100)
        const usedNow = Number((await run('df', ['-B1', '--output=used', ext4Mnt])).stdout.trim().split('\n')[1])
        log(`filling ext4 to ${pct}% (${fmtBytes(target)}; ${fmtBytes(usedNow)} used now)...`)
        const t0 = process.hrtime.bigint()
        fileIndex = await fillFiles(ext4Mnt, ctx.src, srcBytes, Math.max(0, target - usedNow), 60 + pct, fileIndex)
        filled = target
        await run('umount', [ext4Mnt])
        ext4Mounted = false
        log(`  filled in ${hrSeconds(t0).toFixed(1)} s`)
        const snap = `p${pct}`
        await m.snapshot('f6', snap)
        const snapFile = path.join(m.vdisk, 'snapshots', 'f6', snap)
        const copyFile = path.join(m.vdisk, 'copies', 'f6', snap)
        const outs = { tar: path.join(work, 'out.tar'), full: path.join(work, 'full.raw'), copy: path.join(work, 'copy.vdimg') }
        const methods = {
          tar: async () => {
            await run('mount', ['-o', 'loop,ro,noload', snapFile, ext4Mnt])
            ext4Mounted = true
            try {
              return await timed('sh', ['-c', `tar -cf '${outs.tar}' -C '${ext4Mnt}' . && sync '${outs.tar}'`])
            } finally {
              await run('umount', [ext4Mnt])
              ext4Mounted = false
            }
          },
          full: () => ddOut(snapFile, outs.full),
          copy: () => ddOut(copyFile, outs.copy)
        }
        const secs = { tar: [], full: [], copy: [] }
        const sizes = {}
        for (let r = 0; r < rounds; r++) {
          for (const k of Object.keys(methods)) {
            m.checkAlive()
            await dropCaches()
            secs[k].push(await methods[k]())
            sizes[k] = await fileSize(outs[k])
            log(`fig6 ${pct}% ${k.padEnd(5)} round ${r + 1}: ${secs[k].at(-1).toFixed(2)} s, ${fmtBytes(sizes[k])}`)
            if (k === 'tar') await rm(outs.tar, { force: true })
            if (k === 'copy' && !(pct === 80 && r === rounds - 1)) await rm(outs.copy, { force: true })
            if (k === 'full' && !(pct === 80 && r === rounds - 1)) await rm(outs.full, { force: true })
          }
        }
        const med = Object.fromEntries(Object.entries(secs).map(([k, v]) => [k, median(v)]))
        figures.fig6[pct] = { seconds: med, rounds: secs, bytes: sizes, usedBytes: filled }
        for (const k of ['tar', 'full', 'copy']) {
          fig6Rows.push([`${pct}%`, { tar: 'tar of the files', full: 'dd of the full snapshot file', copy: 'dd of copies/… (compacted copy)' }[k],
            fmt(med[k], 2), fmt(100 * med[k] / med.full, 0), fmtBytes(sizes[k]), fmt(100 * sizes[k] / sizes.full, 0)])
        }
      }
      if (fig6Rows.length) res.tables.push({
        title: `FIG. 6: ext4 in a ${fmtBytes(virt)} disk, files of 1–8 MiB, at 20% and 80% fill; caches dropped before each method; ` +
          `median of ${rounds} round(s); time and capacity relative to the full dump (= 100)`,
        headers: ['fill', 'method', 'seconds', 'time (full = 100)', 'output', 'capacity (full = 100)'],
        rows: fig6Rows
      })

      // ---- part B: per used byte -------------------------------------------------------------------
      const sets = []
      if (parts.includes('B') || parts.includes('C')) {
        const sVirt = q ? 640 * MiB : 5 * GiB
        const sUsed = q ? 128 * MiB : GiB
        await m.create('sh', String(sVirt))
        const raw = path.join(work, 'shuffled.raw')
        await run('truncate', ['-s', String(sVirt), raw])
        const positions = shuffled(sample(sVirt / BLOCK, sUsed / BLOCK, 7), 8).map((i) => i * BLOCK)
        log(`writing ${fmtBytes(sUsed)} of random 64 KiB blocks in shuffled order to 'sh' and ${path.basename(raw)}...`)
        const t0 = process.hrtime.bigint()
        await writeChunks([m.diskFile('sh'), raw], positions, BLOCK, { depth: 1 })
        log(`  written in ${hrSeconds(t0).toFixed(1)} s`)
        await m.snapshot('sh', 's1')
        sets.push({ key: 'shuffled', disk: 'sh', snap: 's1', raw, label: `shuffled: ${fmtBytes(sUsed)} of 64 KiB blocks written in random order, ${fmtBytes(sVirt)} disk` })
      }
      if (parts.includes('A') && parts.includes('B')) {
        const raw = path.join(work, 'full.raw')
        await run('fallocate', ['-d', raw])
        sets.push({ key: 'ext4', disk: 'f6', snap: 'p80', raw, label: 'ext4 at 80% (part A)' })
      }
      const perByteRows = []
      for (const set of parts.includes('B') ? sets : []) {
        const img = path.join(work, `${set.key}.vdimg`)
        const qcow = path.join(work, `${set.key}.qcow2`)
        const back = path.join(work, `${set.key}.back.raw`)
        const floorOut = path.join(work, `${set.key}.floor.vdimg`)
        const copyFile = path.join(m.vdisk, 'copies', set.disk, set.snap)
        const methods = [
          ['copyNull', 'dd of copies/… to /dev/null (the mount\'s read side alone)', async () => (await dd({ src: copyFile, dst: '/dev/null', bs: '1M', timeoutMs: config.ddTimeoutMs })).wallSeconds],
          ['copy', 'dd of copies/… to a file (conv=fsync)', () => ddOut(copyFile, img)],
          ['backup', 'vdiskfs backup -o FILE', () => cli(['backup', `${set.disk}@${set.snap}`, '-o', img])],
          // the floor of the two rows above: the same image bytes, from a plain file on this disk, through
          // the reader and writer backup -o uses (durable-copy.mjs); what the mount adds is the difference
          ['floor', 'the floor: the image file copied durably by backup -o\'s reader and writer (no FUSE)', async () => {
            const s = await timed(process.execPath, [DURABLE_COPY, img, floorOut])
            await rm(floorOut, { force: true })
            return s
          }],
          ['verify', 'vdiskfs verify FILE', () => timed(process.execPath, [m.cli, 'verify', img])],
          ['restore', 'dd FILE into import/', async () => {
            const s = (await dd({ src: img, dst: path.join(m.vdisk, 'import', 'rb'), bs: '1M', timeoutMs: config.ddTimeoutMs })).wallSeconds
            await waitFor(() => exists(m.diskFile('rb')), 10_000, 50, 'rb to appear')
            return s
          }],
          ['restoreCli', 'vdiskfs restore FILE --as', () => cli(['restore', img, '--as', 'rc'])],
          ...(qemuImg
            ? [['qcow2Out', 'qemu-img convert -O qcow2 (raw → qcow2)', () => timed(qemuImg, ['convert', '-O', 'qcow2', set.raw, qcow])],
                ['qcow2Back', 'qemu-img convert -O raw (qcow2 → raw)', () => timed(qemuImg, ['convert', '-O', 'raw', qcow, back])],
                // the same with the output flushed at the end (-t writeback), as vdiskfs's restores and
                // `backup -o` (fdatasync) and the dd rows (conv=fsync) are: qemu-img's default (-t unsafe) is not
                ['qcow2OutSync', 'qemu-img convert -t writeback -O qcow2 (output flushed)', () => timed(qemuImg, ['convert', '-t', 'writeback', '-O', 'qcow2', set.raw, qcow])],
                ['qcow2BackSync', 'qemu-img convert -t writeback -O raw (output flushed)', () => timed(qemuImg, ['convert', '-t', 'writeback', '-O', 'raw', qcow, back])]]
            : []),
          ['disk', 'the disk: fio O_DIRECT read of a dense file, 2 MiB × 8', null]
        ]
        const secs = Object.fromEntries(methods.map(([k]) => [k, []]))
        const diskMBps = []
        let used = 0
        for (let r = 0; r < rounds; r++) {
          for (const [k, , fn] of methods) {
            m.checkAlive()
            await dropCaches()
            if (k === 'disk') {
              const f = await fioDirect(ctx.src, srcBytes)
              diskMBps.push(f.MBps)
              log(`${set.key} disk round ${r + 1}: ${fmt(f.MBps)} MB/s`)
              continue
            }
            secs[k].push(await fn())
            if (k === 'copy') used = (await fileSize(img))
            log(`${set.key} ${k.padEnd(10)} round ${r + 1}: ${secs[k].at(-1).toFixed(2)} s`)
            if (k === 'restore') await m.control('delete rb -r')
            if (k === 'restoreCli') await m.control('delete rc -r')
            if (k === 'qcow2Back' || k === 'qcow2BackSync') await rm(back, { force: true })
            if (k === 'qcow2Out' && !secs.qcow2Back) await rm(qcow, { force: true })
          }
        }
        // used bytes: the image's data (slots × block size)
        const ins = await run(process.execPath, [m.cli, 'inspect', img, '--rows', '0'], { check: false })
        const slots = Number(/data blocks:\s+(\d+)/.exec(ins.stdout)?.[1] ?? NaN)
        const usedBytes = Number.isFinite(slots) ? slots * BLOCK : used
        const dMed = median(diskMBps)
        const med = (k) => (secs[k] ? median(secs[k]) : null)
        const qBest = { out: med('qcow2Out'), back: med('qcow2Back'), outSync: med('qcow2OutSync'), backSync: med('qcow2BackSync') }
        const set6 = { usedBytes, diskMBps: dMed, diskRounds: diskMBps, seconds: {}, rounds: secs }
        for (const [k, label] of methods) {
          if (k === 'disk') {
            perByteRows.push([set.key, label, '–', fmt(dMed), '1.00×', '–', '–'])
            continue
          }
          const s = median(secs[k])
          set6.seconds[k] = s
          const mbps = usedBytes / 1e6 / s
          const vsQ = k.startsWith('restore') ? qBest.back : (k.startsWith('copy') || k === 'backup') ? qBest.out : null
          // flushed against flushed: restores, backup -o and dd conv=fsync make their output durable
          const vsQs = k.startsWith('restore') ? qBest.backSync : (k === 'copy' || k === 'backup' || k === 'floor') ? qBest.outSync : null
          perByteRows.push([set.key, label, fmt(s, 2), fmt(mbps), `${fmt(mbps / dMed, 2)}×`, vsQ ? `${fmt(vsQ / s, 2)}×` : '–', vsQs ? `${fmt(vsQs / s, 2)}×` : '–'])
        }
        figures.perByte[set.key] = set6
        await rm(img, { force: true })
        await rm(qcow, { force: true })
        if (set.key === 'shuffled') await rm(set.raw, { force: true })
      }
      if (perByteRows.length) res.tables.push({
        title: `Copy and restore per used byte (MB/s = image data bytes / seconds), caches dropped before each, median of ${rounds} round(s). ` +
          sets.map((s) => s.label).join('; ') + '. × disk: against the fio O_DIRECT read of a dense file on the same filesystem; × qemu: qemu-img seconds / these seconds (copy vs raw → qcow2, restore vs qcow2 → raw); flushed: against qemu-img -t writeback, whose output is durable when it exits, as the rows compared are',
        headers: ['data', 'method', 'seconds', 'used MB/s', '× disk', '× qemu-img', '× qemu-img, flushed'],
        rows: perByteRows
      })

      // ---- part C: live writes during a backup -----------------------------------------------------
      if (parts.includes('C')) {
      const wBytes = q ? 128 * MiB : GiB
      await m.create('lw', String(2 * wBytes))
      const lwFile = m.diskFile('lw')
      const writeOnce = async () => (await dd({ src: ctx.src, dst: lwFile, bs: '1M', count: wBytes / MiB, conv: 'notrunc,fsync', timeoutMs: config.ddTimeoutMs }))
      const alone = []
      const during = []
      const copyDuring = []
      for (let r = 0; r < rounds; r++) {
        await dropCaches()
        const a = await writeOnce()
        alone.push(wBytes / 1e6 / a.wallSeconds)
        await dropCaches()
        const copyP = dd({ src: path.join(m.vdisk, 'copies', 'sh', 's1'), dst: '/dev/null', bs: '1M', timeoutMs: config.ddTimeoutMs })
        await new Promise((resolve) => setTimeout(resolve, 200))
        const b = await writeOnce()
        during.push(wBytes / 1e6 / b.wallSeconds)
        const c = await copyP
        copyDuring.push(c.bytes / 1e6 / c.wallSeconds)
        log(`live write round ${r + 1}: alone ${fmt(alone.at(-1))} MB/s, during a copy ${fmt(during.at(-1))} MB/s (copy ${fmt(copyDuring.at(-1))} MB/s)`)
      }
      figures.liveWrite = { alone, during, copyDuring }
      res.tables.push({
        title: `Writes to a live disk while a backup runs: dd of ${fmtBytes(wBytes)} (bs=1M conv=fsync) into another disk of the same mount, alone and while dd reads copies/sh/s1; median of ${rounds}`,
        headers: ['write', 'MB/s', 'ratio'],
        rows: [['alone', fmt(median(alone)), '1.00×'], ['during a backup', fmt(median(during)), `${fmt(median(during) / median(alone), 2)}×`],
          ['(the backup meanwhile, image MB/s)', fmt(median(copyDuring)), '–']]
      })
      }
      figures.peakRssMiB = await m.server.peakRssMiB()
      res.notes.push(`fig6 server peak RSS ${fmt(figures.peakRssMiB, 0)} MiB`)
      res.figures = figures
    } finally {
      if (ext4Mounted) await run('umount', ['-l', ext4Mnt], { check: false })
      await m.stop()
      await rm(work, { recursive: true, force: true })
    }
    return res
  }
}
