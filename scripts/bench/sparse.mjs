// Bench section "sparse": holes and discard through the mount.
//
// One vdiskfs mount (fresh store):
//   empty   a 100 GiB thin disk, nothing written: `cp --sparse=always` of it to a file in the bench dir (it
//           asks SEEK_DATA/SEEK_HOLE, answered from the tables, and reads no zeros)
//   one     a 100 GiB disk holding 1 MiB in the middle: the same copy, and `qemu-img map` (if installed)
//   fs      a 4 GiB disk (quick: 1 GiB) with ext4 (mkfs -E nodiscard) on a loop device: U MiB written to a
//           file (U = 1024; quick 64), fsync, deleted, then `fstrim` timed; du of the disk before and after
// Every figure is one run (seconds); the machine is shared, so they are noisy.
import { rm } from 'node:fs/promises'
import path from 'node:path'
import { MiB, allocatedBytes, dd, fmt, run } from './lib.mjs'
import { mountVdiskfs } from './vdisk.mjs'

export const sparseSection = {
  key: 'sparse',
  title: 'Holes and discard',
  async run (ctx, res) {
    const { config } = ctx
    const U = config.seqMiB
    const log = (s) => process.stderr.write(`   ${s}\n`)
    const m = await mountVdiskfs(ctx, 'sparse')
    if (m.skip) return { skipped: m.skip }
    const rows = []
    try {
      // ---- sparse copies --------------------------------------------------------------------------
      await m.create('empty', '100G')
      await m.create('one', '100G')
      await dd({ src: ctx.src, dst: m.diskFile('one'), count: 1, seek: 50 * 1024, conv: 'notrunc,fsync', timeoutMs: 60_000 })
      for (const disk of ['empty', 'one']) {
        const copy = path.join(ctx.dir, `${disk}.copy`)
        const r = await run('cp', ['--sparse=always', m.diskFile(disk), copy], { timeoutMs: 30 * 60_000 })
        const alloc = await allocatedBytes(copy)
        await rm(copy, { force: true })
        log(`cp --sparse=always of ${disk}: ${fmt(r.seconds, 3)} s (copy allocates ${fmt(alloc / MiB, 1)} MiB)`)
        rows.push([`\`cp --sparse=always\` of a 100 GiB disk, ${disk === 'empty' ? 'empty' : 'holding 1 MiB'}`, fmt(r.seconds, 3), `copy allocates ${fmt(alloc / MiB, 1)} MiB`])
      }
      const qemuImg = await run('qemu-img', ['--version'], { check: false }).catch(() => null)
      if (qemuImg && qemuImg.code === 0) {
        const r = await run('qemu-img', ['map', '--output=json', '-f', 'raw', m.diskFile('one')], { timeoutMs: 30 * 60_000 })
        const extents = JSON.parse(r.stdout).filter((e) => e.data)
        log(`qemu-img map of one: ${fmt(r.seconds, 3)} s, data extents ${JSON.stringify(extents.map((e) => [e.start, e.length]))}`)
        rows.push(['`qemu-img map` of the 100 GiB disk holding 1 MiB', fmt(r.seconds, 3), `data extents: ${extents.map((e) => `${e.length / MiB} MiB at ${e.start / MiB} MiB`).join(', ')}`])
      } else {
        res.notes.push('qemu-img not installed: no `qemu-img map` figure (scripts/setup.sh --bench installs it)')
      }

      // ---- fstrim through ext4 on a loop device -------------------------------------------------
      const loop = await run('bash', ['-c', 'test -e /dev/loop-control && command -v mkfs.ext4 >/dev/null && losetup -f'], { check: false })
      if (loop.code !== 0) {
        res.notes.push('loop devices unavailable: no fstrim figure')
      } else {
        await m.create('fs', config.quick ? '1G' : '4G')
        const disk = m.diskFile('fs')
        const lm = path.join(ctx.dir, 'loop-sparse')
        await run('mkdir', ['-p', lm])
        await run('mkfs.ext4', ['-q', '-F', '-E', 'nodiscard', disk])
        await run('mount', ['-o', 'loop', disk, lm])
        try {
          await dd({ src: ctx.src, dst: path.join(lm, 'big'), count: U, conv: 'fsync', timeoutMs: config.ddTimeoutMs })
          await run('sync')
          await run('rm', [path.join(lm, 'big')])
          await run('sync')
          const before = await allocatedBytes(disk)
          const r = await run('fstrim', ['-v', lm], { timeoutMs: 30 * 60_000 })
          const after = await allocatedBytes(disk)
          log(`fstrim after deleting ${U} MiB: ${fmt(r.seconds, 3)} s; disk allocated ${fmt(before / MiB)} -> ${fmt(after / MiB)} MiB (${r.stdout.trim()})`)
          rows.push([`\`fstrim\` of ext4 on a loop-mounted disk after deleting a ${U} MiB file`, fmt(r.seconds, 3), `disk allocated ${fmt(before / MiB)} MiB -> ${fmt(after / MiB)} MiB`])
        } finally {
          await run('umount', [lm], { check: false, duringCleanup: true })
        }
      }
      res.tables.push({ title: 'Holes and discard (one run each, seconds)', headers: ['operation', 's', 'result'], rows })
    } finally {
      await m.stop()
    }
  }
}
