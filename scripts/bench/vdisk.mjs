// Helpers shared by the bench sections that drive a vdiskfs mount directly (snapshot.mjs, backup.mjs).
//
// The mount is served by a child process (`node dist/cli/main.js mount MP --store S -f`); this process only
// talks to it through async fs calls and async child processes (lib.mjs), never execSync/spawnSync.
//
// Exports:
//   mountVdiskfs(ctx, name)        fresh store + mount under ctx.dir; returns a handle (see below) or { skip }
//   serverFlags(root)              the node flags a background mount gives its daemon, for -f servers
//   serverEnv(root)                the environment a background mount gives its daemon, for -f servers
//   writeChunks(file, chunks)      async positional writes of { pos, buf } pairs into an open-able file
//   hrSeconds(t0)                  seconds since a process.hrtime.bigint() value
import { randomFillSync } from 'node:crypto'
import { mkdir, open, rm, writeFile } from 'node:fs/promises'
import path from 'node:path'
import { pathToFileURL } from 'node:url'
import process from 'node:process'
import { aborting, exists, isMounted, startServer, waitFor } from './lib.mjs'

/** The build's src/cli/mount.ts (dist/cli/mount.js under root), or null when it is not built. */
async function mountModule (root) {
  const mod = path.join(root, 'dist/cli/mount.js')
  return (await exists(mod)) ? import(pathToFileURL(mod).href) : null
}

/**
 * The node flags a background mount gives its daemon (src/cli/mount.ts SERVER_NODE_FLAGS). The bench mounts
 * in the foreground, so it passes them itself, to vdiskfs and to null FUSE alike.
 */
export async function serverFlags (root) {
  return [...((await mountModule(root))?.SERVER_NODE_FLAGS ?? [])]
}

/**
 * process.env with the malloc settings a background mount gives its daemon (src/cli/mount.ts serverEnv),
 * for the servers the bench starts in the foreground: vdiskfs and null FUSE alike.
 */
export async function serverEnv (root) {
  const m = await mountModule(root)
  return m ? m.serverEnv(process.env) : { ...process.env }
}

export function hrSeconds (t0) {
  return Number(process.hrtime.bigint() - t0) / 1e9
}

/**
 * scripts/nullfs.mjs mounted at `mountpoint` serving one file, `null`, of `bytes` bytes: the null FUSE
 * filesystem, or with `backing` (a file path) the passthrough to that file with O_DIRECT (the least a FUSE
 * filesystem keeping its data on this disk does per request). Returns the file and the server.
 */
export async function startNullfs ({ root, mountpoint, bytes, backing, name }) {
  await mkdir(mountpoint, { recursive: true })
  const server = await startServer(process.execPath,
    [...(await serverFlags(root)), path.join(root, 'scripts/nullfs.mjs'), mountpoint, String(bytes), ...(backing ? [backing] : [])],
    { mountpoint, env: await serverEnv(root), readyLine: /^ready$/m, ready: () => isMounted(mountpoint), name })
  return { file: path.join(mountpoint, 'null'), server, mountpoint }
}

/**
 * Mount vdiskfs on ctx.dir/mnt-<name> with a new store ctx.dir/store-<name>. The mountpoint is added to
 * ctx.mountpoints so the bench's exit cleanup never removes the temp dir through a live mount.
 * Returns { mountpoint, store, ctl, vdisk, cli, server, control(line) -> seconds, create(disk, size),
 *           snapshot(disk, snap) -> seconds, checkAlive(), stop() }.
 */
export async function mountVdiskfs (ctx, name, extraArgs = []) {
  const cli = path.join(ctx.root, 'dist/cli/main.js')
  if (!(await exists(cli))) return { skip: 'dist/cli/main.js not built (npm run build)' }
  const mountpoint = path.join(ctx.dir, `mnt-${name}`)
  const store = path.join(ctx.dir, `store-${name}`)
  await mkdir(mountpoint, { recursive: true })
  await mkdir(store, { recursive: true })
  ctx.mountpoints.push(mountpoint)
  const vdisk = path.join(mountpoint, '.vdisk')
  const ctl = path.join(vdisk, 'ctl')
  const server = await startServer(process.execPath, [...(await serverFlags(ctx.root)), cli, 'mount', mountpoint, '--store', store, ...extraArgs, '-f'],
    { mountpoint, env: await serverEnv(ctx.root), ready: async () => (await isMounted(mountpoint)) && exists(ctl), name: `vdiskfs (${name})` })

  const checkAlive = () => {
    const ex = server.exited()
    if (ex) throw new Error(`vdiskfs server exited ${JSON.stringify(ex)}: ${server.output()}`)
  }
  /** Write one control line (open/write/close, like `echo ... > ctl`); returns the seconds it took. */
  const control = async (line) => {
    checkAlive()
    const t0 = process.hrtime.bigint()
    try {
      await writeFile(ctl, line + '\n')
    } catch (err) {
      err.message = `control '${line}': ${err.message}`
      throw err
    }
    return hrSeconds(t0)
  }
  return {
    mountpoint,
    store,
    ctl,
    vdisk,
    cli,
    server,
    control,
    checkAlive,
    diskFile: (disk) => path.join(mountpoint, disk),
    async create (disk, size) {
      await control(`create ${disk} ${size}`)
      await waitFor(() => exists(path.join(mountpoint, disk)), 10_000, 50, `${disk} to appear`)
    },
    /** Timed `snapshot disk snap`; the snapshot file's appearance is checked outside the timing. */
    async snapshot (disk, snap) {
      const s = await control(`snapshot ${disk} ${snap}`)
      await waitFor(() => exists(path.join(vdisk, 'snapshots', disk, snap)), 10_000, 50, `snapshot ${disk}@${snap} to appear`)
      return s
    },
    async stop () {
      await server.stop()
      if (await isMounted(mountpoint)) throw new Error(`${mountpoint} still mounted after stop`)
      await rm(store, { recursive: true, force: true })
    }
  }
}

/**
 * Write chunks into `files` (each chunk to every file, same offset): chunks is an iterable of positions,
 * fill(buf, pos) fills the chunk's data. Keeps `depth` chunks in flight. Ends with fsync of every file.
 */
export async function writeChunks (files, positions, chunkBytes, { depth = 4, fill = (b) => randomFillSync(b) } = {}) {
  const fhs = []
  try {
    for (const f of files) fhs.push(await open(f, 'r+'))
    const it = positions[Symbol.iterator]()
    const worker = async () => {
      const buf = Buffer.allocUnsafe(chunkBytes)
      for (;;) {
        if (aborting()) throw new Error('aborted')
        const n = it.next()
        if (n.done) return
        await fill(buf, n.value)
        await Promise.all(fhs.map(async (fh) => {
          const { bytesWritten } = await fh.write(buf, 0, chunkBytes, n.value)
          if (bytesWritten !== chunkBytes) throw new Error(`short write at ${n.value}: ${bytesWritten}`)
        }))
      }
    }
    await Promise.all(Array.from({ length: depth }, worker))
    for (const fh of fhs) await fh.sync()
  } finally {
    for (const fh of fhs) await fh.close().catch(() => {})
  }
}
