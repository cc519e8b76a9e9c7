// Bench section "replicate": keeping a standby disk in step, and rollback time against changed size.
//
// Standby: stores A and B, each mounted (mnt-replA, mnt-replB). Disk d of 4 GiB (quick 512 MiB) on A, U MiB
// (1024; quick 64) of random data written. `vdiskfs replicate d --store A --to-store B` sends the full image
// the first time; then, per round, 1% and 10% of the written 64 KiB blocks (seeded, scattered) are
// overwritten on A and replicate sends the delta. Reported: seconds (the command as a user runs it, with its
// three child processes), bytes sent, bytes sent per byte changed; B's disk is compared with A's at the end.
// Rollback: snapshot r, overwrite X MiB (1, U/10, U), `rollback d r` (constant: the entries move back behind
// it; the time until a write lands includes that move), against the rollback that keeps a newer snapshot
// (copies the X MiB).
// Medians of config.rounds rounds.
import process from 'node:process'
import { createHash } from 'node:crypto'
import { createReadStream } from 'node:fs'
import { MiB, fmt, fmtBytes, median, mulberry32, run } from './lib.mjs'
import { hrSeconds, mountVdiskfs, writeChunks } from './vdisk.mjs'

const BLOCK = 64 * 1024

async function sha (file) {
  const h = createHash('sha256')
  for await (const b of createReadStream(file, { highWaterMark: 4 * MiB })) h.update(b)
  return h.digest('hex')
}

export const replicateSection = {
  key: 'replicate',
  title: 'Standby kept in step (replicate) and rollback',
  async run (ctx, res) {
    const { config } = ctx
    const U = config.seqMiB
    const log = (s) => process.stderr.write(`   ${s}\n`)
    const a = await mountVdiskfs(ctx, 'replA')
    if (a.skip) return { skipped: a.skip }
    const b = await mountVdiskfs(ctx, 'replB')
    try {
      await a.create('d', config.quick ? '512M' : '4G')
      const file = a.diskFile('d')
      const blocks = (U * MiB) / BLOCK
      await writeChunks([file], Array.from({ length: blocks }, (_, i) => i * BLOCK), BLOCK, { depth: 8 })
      const replicate = async () => {
        const r = await run(process.execPath, [a.cli, 'replicate', 'd', '--store', a.store, '--to-store', b.store, '--json', '--keep', '2'], { timeoutMs: config.ddTimeoutMs })
        return { seconds: r.seconds, ...JSON.parse(r.stdout) }
      }
      const full = await replicate()
      log(`full: ${fmt(full.seconds, 2)} s, ${fmtBytes(full.bytes)}`)
      const rows = [['full image (first run)', fmt(U), fmt(full.seconds, 2), fmt(full.bytes / MiB, 1), fmt(full.bytes / (U * MiB), 3), fmt(U * MiB / 1e6 / full.seconds)]]
      const rnd = mulberry32(16)
      for (const pct of [1, 10]) {
        const t = []
        const bytes = []
        let changed = 0
        for (let r = 0; r < config.rounds; r++) {
          const chosen = new Set()
          while (chosen.size < Math.max(1, Math.round(blocks * pct / 100))) chosen.add(Math.floor(rnd() * blocks))
          await writeChunks([file], [...chosen].sort((x, y) => x - y).map((x) => x * BLOCK), BLOCK)
          changed = chosen.size * BLOCK
          const d = await replicate()
          if (d.kind !== 'delta') throw new Error(`expected a delta, got ${d.kind}`)
          t.push(d.seconds)
          bytes.push(d.bytes)
          log(`${pct}% round ${r + 1}: ${fmt(d.seconds, 2)} s, ${fmtBytes(d.bytes)} for ${fmtBytes(changed)} changed`)
        }
        const s = median(t)
        const by = median(bytes)
        rows.push([`delta, ${pct}% of the data changed`, fmt(changed / MiB, 1), fmt(s, 2), fmt(by / MiB, 1), fmt(by / changed, 3), fmt(changed / 1e6 / s)])
        res.figures[`delta${pct}Seconds`] = s
        res.figures[`delta${pct}BytesPerChanged`] = by / changed
      }
      const same = (await sha(file)) === (await sha(b.diskFile('d')))
      if (!same) res.errors.push('the standby disk differs from the primary after replicate')
      res.tables.push({
        title: `\`vdiskfs replicate d --to-store B\` (both stores mounted), ${U} MiB of data on a ${config.quick ? '512 MiB' : '4 GiB'} disk, medians of ${config.rounds}`,
        headers: ['run', 'MiB changed', 's', 'MiB sent', 'sent / changed', 'changed MB/s'],
        rows
      })
      res.notes.push(`standby identical to the primary afterwards: ${same ? 'yes' : 'NO'}`)

      // ---- rollback time against changed size -------------------------------------------------------
      const sizes = [1, Math.max(2, Math.round(U / 10)), U]
      const rb = []
      for (const x of sizes) {
        const moved = []
        const writable = []
        const copied = []
        for (let r = 0; r < config.rounds; r++) {
          await a.control('snapshot d r')
          await writeChunks([file], Array.from({ length: (x * MiB) / BLOCK }, (_, i) => i * BLOCK), BLOCK, { depth: 8 })
          const t0 = process.hrtime.bigint()
          moved.push(await a.control('rollback d r'))
          await writeChunks([file], [0], BLOCK) // a write waits until the entries have moved back
          writable.push(hrSeconds(t0))
          await writeChunks([file], Array.from({ length: (x * MiB) / BLOCK }, (_, i) => i * BLOCK), BLOCK, { depth: 8 })
          await a.control('snapshot d keep')
          copied.push(await a.control('rollback d r'))
          await a.control('delete-snapshot d keep')
          await a.control('delete-snapshot d r')
          log(`rollback with ${x} MiB changed, round ${r + 1}: ${fmt(moved.at(-1) * 1000, 1)} ms (latest), writable after ${fmt(writable.at(-1) * 1000, 1)} ms, ${fmt(copied.at(-1) * 1000, 1)} ms (newer kept: copy)`)
        }
        rb.push([fmt(x), fmt(median(moved) * 1000, 1), fmt(median(writable) * 1000, 1), fmt(median(copied) * 1000, 1)])
        res.figures[`rollback${x}MiBms`] = median(moved) * 1000
        res.figures[`rollback${x}MiBWritableMs`] = median(writable) * 1000
      }
      res.tables.push({
        title: `Rollback time against the data changed since the snapshot (ms, medians of ${config.rounds})`,
        headers: ['MiB changed', 'rollback to the latest snapshot (command)', 'same, until a write lands (entries moved back)', 'rollback keeping a newer snapshot (blocks copied)'],
        rows: rb
      })
      const t0 = process.hrtime.bigint()
      await run(process.execPath, [a.cli, 'status', '--store', a.store], { check: false })
      res.notes.push(`a bare CLI command against the mount (\`vdiskfs status\`) takes ${fmt(hrSeconds(t0), 2)} s here: replicate runs five (status of both sides, snapshot, backup, restore) plus pruning`)
    } finally {
      await b.stop?.()
      await a.stop()
    }
  }
}
