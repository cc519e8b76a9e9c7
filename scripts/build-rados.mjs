#!/usr/bin/env node
// Build the optional librados addon (native/rados) when librados-dev is installed; otherwise say so and
// succeed: vdiskfs works without it (only the rados store needs it). Run by `npm ci`/`npm install`
// (the package's install script) and by `npm run build:rados`. Never fails the install.
import { existsSync } from 'node:fs';
import { spawn } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const dir = join(dirname(fileURLToPath(import.meta.url)), '..', 'native', 'rados');
const strict = process.argv.includes('--strict');
const say = (s) => console.log(`build-rados: ${s}`);
if (!existsSync('/usr/include/rados/librados.h')) {
  say('librados-dev not installed: the rados block store is not built (scripts/setup.sh --ceph installs it)');
  process.exit(strict ? 1 : 0);
}
const gyp = process.env.npm_config_node_gyp ?? [join(dirname(process.execPath), '../lib/node_modules/npm/node_modules/node-gyp/bin/node-gyp.js'), '/usr/lib/node_modules/npm/node_modules/node-gyp/bin/node-gyp.js'].find((p) => existsSync(p));
if (!gyp) {
  say('node-gyp not found (it comes with npm): the rados block store is not built');
  process.exit(strict ? 1 : 0);
}
// Node's own headers where the distribution installed them: no download.
const nodedir = existsSync(join(dirname(process.execPath), '../include/node/node_api.h')) ? ['--nodedir', join(dirname(process.execPath), '..')] : [];
const child = spawn(process.execPath, [gyp, 'rebuild', ...nodedir], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
let out = '';
child.stdout.on('data', (d) => (out += d));
child.stderr.on('data', (d) => (out += d));
child.on('exit', (code) => {
  if (code === 0) say('built native/rados/build/Release/vdiskfs_rados.node');
  else {
    say(`building the addon failed (the rest of vdiskfs works without it):\n${out.split('\n').slice(-15).join('\n')}`);
    process.exit(strict ? 1 : 0);
  }
});
