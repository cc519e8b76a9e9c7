#!/usr/bin/env node
// The floor of writing an image file durably on this machine (bench section fig6): copies SRC to DST with the
// reader and writer `vdiskfs backup -o` uses (dist/image/fileSource.js and fileSink.js: large reads and writes,
// O_DIRECT both ways where the filesystem allows, DST fdatasync'd before it exits), from a plain file, with
// no FUSE, tables or checksums in between. Needs `npm run build` first.
//
//   node scripts/bench/durable-copy.mjs SRC DST
import process from 'node:process'
import { fileChunks } from '../../dist/image/fileSource.js'
import { writeFileDurably } from '../../dist/image/fileSink.js'

const [src, dst] = process.argv.slice(2)
if (!src || !dst) {
  process.stderr.write('usage: node scripts/bench/durable-copy.mjs SRC DST\n')
  process.exit(2)
}
const { bytes, direct } = await writeFileDurably(dst, fileChunks(src))
process.stdout.write(`${bytes} bytes${direct ? ' (O_DIRECT)' : ''}\n`)
