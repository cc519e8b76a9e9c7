// Bench section "ceph": a vdiskfs store on the rados bottom (issue 20) against Ceph's own tools on the same
// local cluster: `rados bench` (64 KiB objects, the size of vdiskfs' blocks, 16 in flight) and `rbd bench`
// (an RBD image, Ceph's own thin disk), and the cost of an OSD failure.
//
// Needs Ceph (scripts/setup.sh --ceph) and the rados addon (npm ci builds it where librados-dev is
// installed); without them the section is skipped with a note. It starts its own cluster
// (scripts/ceph-local.sh, 1 mon + 3 OSDs on sparse files under the bench dir) and stops it at the end.
// Per round, each figure in turn: vdiskfs seq write (dd 1 MiB, conv=fsync) and cold seq read of U MiB
// (U = 256; quick 32); fio 4 KiB psync random read and write on the disk file; rados bench write and seq;
// rbd bench 4 KiB random write and read with one thread (fio's one job's depth) and 1 MiB sequential write
// with 16 (rbd bench's default). Then once: the vdiskfs seq write with OSD 2 killed (the pool runs degraded on 2 of 3), and
// again after it rejoined.
import { mkdir } from 'node:fs/promises'
import path from 'node:path'
import { dd, dropCaches, exists, fio, fmt, median, onCleanup, run, which } from './lib.mjs'
import { mountVdiskfs } from './vdisk.mjs'

const POOL = 'vdiskfs'

function rateOf (out, re) {
  const m = out.match(re)
  return m ? Number(m[1]) : NaN
}

/** rbd bench's "bytes/sec: 67 MiB/s" (the unit varies) in MB/s. */
function rbdMBps (out) {
  const m = out.match(/bytes\/sec:\s*([\d.]+)\s*([KMG]i?B)?\/?s?/)
  if (!m) return NaN
  const unit = { KiB: 1024, MiB: 1024 ** 2, GiB: 1024 ** 3 }[m[2]] ?? 1
  return (Number(m[1]) * unit) / 1e6
}

export const cephSection = {
  key: 'ceph',
  title: 'A store on Ceph RADOS (--block-store rados) against rados bench and rbd bench',
  async run (ctx, res) {
    const { config } = ctx
    const log = (s) => process.stderr.write(`   ${s}\n`)
    if (!(await which('ceph-mon')) || !(await which('rados')) || !(await which('rbd'))) return { skipped: 'Ceph not installed (scripts/setup.sh --ceph)' }
    if (!(await exists(path.join(ctx.root, 'native/rados/build/Release/vdiskfs_rados.node')))) return { skipped: 'the rados addon is not built (npm run build:rados)' }
    const script = path.join(ctx.root, 'scripts/ceph-local.sh')
    const cdir = path.join(ctx.dir, 'ceph')
    await mkdir(cdir, { recursive: true })
    const started = await run('bash', [script, 'start', cdir], { timeoutMs: 300_000 })
    onCleanup(() => run('bash', [script, 'stop', cdir], { check: false, duringCleanup: true, timeoutMs: 60_000 }))
    const conf = started.stdout.trim().split('\n').at(-1)
    const rados = (args, opts = {}) => run('rados', ['-c', conf, '-p', POOL, ...args], { timeoutMs: 300_000, ...opts })
    // no client write-back cache: an rbd write is acknowledged once replicated, as a vdiskfs write to rados
    const rbd = (args) => run('rbd', ['-c', conf, '-p', POOL, '--rbd_cache=false', ...args], { timeoutMs: 300_000 })
    const U = config.quick ? 32 : 256
    const secs = config.quick ? 3 : 10
    const m = await mountVdiskfs(ctx, 'ceph', ['--rados-pool', POOL, '--ceph-conf', conf])
    if (m.skip) {
      await run('bash', [script, 'stop', cdir], { check: false })
      return { skipped: m.skip }
    }
    const f = { vWrite: [], vRead: [], vRandR: [], vRandW: [], rWrite: [], rSeq: [], bRandW: [], bRandR: [], bSeqW: [] }
    try {
      await m.create('d', '2G')
      await rbd(['create', 'benchimg', '--size', '1G'])
      const disk = m.diskFile('d')
      for (let round = 1; round <= config.rounds; round++) {
        const w = await dd({ src: ctx.src, dst: disk, count: U, conv: 'notrunc,fsync', timeoutMs: 600_000 })
        f.vWrite.push(w.MBps)
        await dropCaches()
        const r = await dd({ src: disk, dst: '/dev/null', count: U, timeoutMs: 600_000 })
        f.vRead.push(r.MBps)
        f.vRandR.push((await fio({ filename: disk, rw: 'randread', size: `${U}M`, runtime: secs })).iops)
        f.vRandW.push((await fio({ filename: disk, rw: 'randwrite', size: `${U}M`, runtime: secs })).iops)
        const rw = await rados(['bench', String(secs), 'write', '-b', '65536', '-t', '16', '--no-cleanup'])
        f.rWrite.push(rateOf(rw.stdout, /Bandwidth \(MB\/sec\):\s+([\d.]+)/) * 1.048576)
        const rs = await rados(['bench', String(secs), 'seq', '-t', '16'])
        f.rSeq.push(rateOf(rs.stdout, /Bandwidth \(MB\/sec\):\s+([\d.]+)/) * 1.048576)
        await rados(['cleanup'], { check: false })
        const bw = await rbd(['bench', '--io-type', 'write', '--io-size', '4K', '--io-pattern', 'rand', '--io-threads', '1', '--io-total', config.quick ? '8M' : '64M', 'benchimg'])
        f.bRandW.push(rateOf(bw.stdout, /elapsed:\s*[\d.]+\s+ops:\s*\d+\s+ops\/sec:\s*([\d.]+)/))
        const br = await rbd(['bench', '--io-type', 'read', '--io-size', '4K', '--io-pattern', 'rand', '--io-threads', '1', '--io-total', config.quick ? '8M' : '64M', 'benchimg'])
        f.bRandR.push(rateOf(br.stdout, /elapsed:\s*[\d.]+\s+ops:\s*\d+\s+ops\/sec:\s*([\d.]+)/))
        const bs = await rbd(['bench', '--io-type', 'write', '--io-size', '1M', '--io-pattern', 'seq', '--io-threads', '16', '--io-total', `${U}M`, 'benchimg'])
        f.bSeqW.push(rbdMBps(bs.stdout))
        log(`round ${round}: vdiskfs write ${fmt(w.MBps)} read ${fmt(r.MBps)} MB/s, rand 4K read ${fmt(f.vRandR.at(-1))} write ${fmt(f.vRandW.at(-1))} IOPS; rados bench write ${fmt(f.rWrite.at(-1))} seq ${fmt(f.rSeq.at(-1))} MB/s; rbd bench 4K randwrite ${fmt(f.bRandW.at(-1))} randread ${fmt(f.bRandR.at(-1))} IOPS, 1M seq write ${fmt(f.bSeqW.at(-1))} MB/s`)
      }
      // An OSD failure: the same write with OSD 2 down, then after it rejoined.
      await run('bash', [script, 'kill-osd', cdir, '2'])
      let degraded
      try {
        degraded = (await dd({ src: ctx.src, dst: disk, count: U, conv: 'notrunc,fsync', timeoutMs: 600_000 })).MBps
      } finally {
        await run('bash', [script, 'start-osd', cdir, '2'])
      }
      const rejoined = (await dd({ src: ctx.src, dst: disk, count: U, conv: 'notrunc,fsync', timeoutMs: 600_000 })).MBps
      log(`vdiskfs seq write with OSD 2 down ${fmt(degraded)} MB/s, after it rejoined ${fmt(rejoined)} MB/s`)
      const md = Object.fromEntries(Object.entries(f).map(([k, v]) => [k, median(v)]))
      Object.assign(res.figures, md, { degradedWrite: degraded, rejoinedWrite: rejoined })
      res.tables.push({
        title: `vdiskfs on rados against Ceph's tools, same cluster (median of ${config.rounds}; ${U} MiB sequential, ${secs} s random)`,
        headers: ['figure', 'vdiskfs (through FUSE)', 'Ceph tool', 'ratio'],
        rows: [
          ['seq write MB/s (dd 1 MiB, fsync) vs `rados bench write` 64 KiB × 16', fmt(md.vWrite), fmt(md.rWrite), `${fmt(md.vWrite / md.rWrite, 2)}×`],
          ['seq write MB/s vs `rbd bench` 1 MiB seq write × 16', fmt(md.vWrite), fmt(md.bSeqW), `${fmt(md.vWrite / md.bSeqW, 2)}×`],
          ['seq read, cold MB/s vs `rados bench seq` 64 KiB × 16', fmt(md.vRead), fmt(md.rSeq), `${fmt(md.vRead / md.rSeq, 2)}×`],
          ['rand 4K read IOPS (fio psync, 1 job) vs `rbd bench` 4K randread, 1 thread', fmt(md.vRandR), fmt(md.bRandR), `${fmt(md.vRandR / md.bRandR, 2)}×`],
          ['rand 4K write IOPS (fio psync, 1 job) vs `rbd bench` 4K randwrite, 1 thread', fmt(md.vRandW), fmt(md.bRandW), `${fmt(md.vRandW / md.bRandW, 2)}×`],
          ['seq write MB/s with one OSD of 3 down (after: rejoined)', fmt(degraded), fmt(rejoined), `${fmt(degraded / rejoined, 2)}×`]
        ]
      })
    } finally {
      await m.stop()
      await run('bash', [script, 'stop', cdir], { check: false, timeoutMs: 60_000 })
    }
  }
}
