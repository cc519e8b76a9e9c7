#!/usr/bin/env bash
# vdiskfs setup: system packages (FUSE 3, libfuse3-dev and the tools to build the binding, fio, e2fsprogs),
# /dev/fuse check, npm ci + build, `vdiskfs` on PATH, and (as root) its man page and bash completion, and
# (as root or with sudo) the mount helper /sbin/mount.vdiskfs and, where systemd runs, vdiskfs@.service
# (scripts/system/install.sh). Idempotent; quiet unless something is installed.
#
#   scripts/setup.sh            # everything needed to mount and to run `npm test`
#   scripts/setup.sh --bench    # additionally qemu-utils / qemu-storage-daemon and postgresql for `npm run bench`
#   scripts/setup.sh --ceph     # additionally Ceph (ceph-mon ceph-osd ceph-common librados-dev) for scripts/ceph-local.sh
#
# Env: SETUP_VERBOSE=1 shows the output of apt-get and npm; SETUP_FORCE_APT=1 runs the apt step anyway.
set -euo pipefail

WANT_BENCH=0
WANT_CEPH=0
for arg in "$@"; do
  case "$arg" in
    --bench) WANT_BENCH=1 ;;
    --ceph) WANT_CEPH=1 ;;
    -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "setup.sh: unknown argument: $arg" >&2; exit 2 ;;
  esac
done

log() { echo "setup: $*"; }
die() { echo "setup: error: $*" >&2; exit 1; }

# Run a command quietly; on failure show its output and fail.
quiet() {
  if [[ "${SETUP_VERBOSE:-0}" == 1 ]]; then "$@"; return; fi
  local out
  if ! out=$("$@" 2>&1); then
    printf '%s\n' "$out" >&2
    return 1
  fi
}

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null 2>&1; then SUDO=(sudo); else SUDO=(); fi
fi

APT_UPDATED=0
apt_update_once() {
  if [[ $APT_UPDATED -eq 0 ]]; then
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install manually: fuse3 libfuse3-dev pkg-config g++ make python3 fio e2fsprogs"
    log "apt-get update"
    quiet "${SUDO[@]}" apt-get update -q || die "apt-get update failed"
    APT_UPDATED=1
  fi
}
apt_install() {
  apt_update_once
  log "installing: $*"
  quiet "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" \
    || { echo "setup: apt-get install $* failed" >&2; return 1; }
}
# Is a package installable from the configured sources? (after apt_update_once)
apt_has() {
  local cand
  cand=$(apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2}')
  [[ -n "$cand" && "$cand" != "(none)" ]]
}

# The FUSE binding (fuse-napi) is built from source against libfuse 3 when npm has no prebuild for this
# Node: it needs libfuse3's headers and pkg-config file, a C/C++ toolchain and python3 (node-gyp).
# Debian's `fuse` (FUSE 2) conflicts with `fuse3` and would remove it (and what depends on it): not installed.
have_libfuse3_dev() {
  pkg-config --exists fuse3 2>/dev/null
}
have_build_tools() {
  command -v g++ >/dev/null 2>&1 && command -v make >/dev/null 2>&1 && command -v python3 >/dev/null 2>&1
}

# ---- 1. system packages -----------------------------------------------------
if [[ "${SETUP_FORCE_APT:-0}" == 1 ]] || ! command -v fusermount3 >/dev/null 2>&1 || ! command -v pkg-config >/dev/null 2>&1 \
   || ! have_libfuse3_dev || ! have_build_tools || ! command -v fio >/dev/null 2>&1 || ! command -v mkfs.ext4 >/dev/null 2>&1; then
  apt_install fuse3 libfuse3-dev pkg-config g++ make python3 fio e2fsprogs
fi
command -v fusermount3 >/dev/null 2>&1 || die "fusermount3 still missing after install"
have_libfuse3_dev || die "libfuse3 development files (pkg-config fuse3) still missing after install"

if [[ $WANT_CEPH -eq 1 ]]; then
  # A local cluster for the rados work (scripts/ceph-local.sh); the daemons are not enabled as services.
  if ! command -v ceph-mon >/dev/null 2>&1 || ! command -v ceph-osd >/dev/null 2>&1 || ! command -v rados >/dev/null 2>&1 || [[ ! -e /usr/include/rados/librados.h ]]; then
    apt_install ceph-mon ceph-osd ceph-common librados-dev || die "Ceph packages not installable (Debian 12 ships Ceph 16.2)"
  fi
fi

if [[ $WANT_BENCH -eq 1 ]]; then
  if ! command -v qemu-img >/dev/null 2>&1; then apt_install qemu-utils || log "qemu-utils not installable; skipping"; fi
  # the bench section `database` runs PostgreSQL's initdb, pg_ctl and pgbench (it skips pgbench without them)
  if ! command -v pgbench >/dev/null 2>&1; then apt_install postgresql || log "postgresql not installable; the database section skips pgbench"; fi
  if ! command -v qemu-storage-daemon >/dev/null 2>&1; then
    apt_update_once
    if apt_has qemu-system-common; then
      apt_install qemu-system-common || log "qemu-system-common not installable; bench will skip the qemu target"
    else
      log "qemu-system-common not available; bench will skip the qemu target"
    fi
  fi
fi

# ---- 2. FUSE device ---------------------------------------------------------
modprobe fuse 2>/dev/null || true
if [[ ! -c /dev/fuse ]]; then
  die "/dev/fuse does not exist. Load the fuse kernel module (modprobe fuse) or, in a container, \
start it with --device /dev/fuse --cap-add SYS_ADMIN."
fi

# ---- 3. node packages, build, PATH -----------------------------------------
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
command -v node >/dev/null 2>&1 || die "node not found (Node >= 20 required)"
NODE_MAJOR=$(node -p 'process.versions.node.split(".")[0]')
[[ $NODE_MAJOR -ge 20 ]] || die "Node >= 20 required, found $(node -v)"

log "npm ci"
if ! npm_out=$(npm ci --no-audit --no-fund 2>&1); then
  if [[ "$npm_out" == *EUSAGE* ]]; then
    # npm 11's `npm ci` wants a lock entry for every platform's optional package (e.g. all of rollup's
    # native builds); a registry mirror that serves only some of them makes that impossible. `npm install`
    # still installs the locked versions; --no-save leaves package-lock.json untouched.
    log "npm ci refused the lock file (optional packages of other platforms missing); using npm install"
    quiet npm install --no-audit --no-fund --no-save || die "npm install failed"
  else
    printf '%s\n' "$npm_out" >&2
    die "npm ci failed"
  fi
elif [[ "${SETUP_VERBOSE:-0}" == 1 ]]; then
  printf '%s\n' "$npm_out"
fi
log "npm run build"
quiet npm run build || die "npm run build failed (output above)"

BIN="$ROOT/dist/cli/main.js"
[[ -f "$BIN" ]] || die "build did not produce $BIN"
chmod +x "$BIN"

# Is the vdiskfs on PATH this checkout's?
linked_here() {
  local p
  p=$(command -v vdiskfs 2>/dev/null) || return 1
  [[ "$(readlink -f "$p")" == "$(readlink -f "$BIN")" ]]
}
if ! linked_here; then
  log "npm link (vdiskfs -> $BIN)"
  quiet npm link --no-audit --no-fund || log "npm link failed; falling back to a symlink"
  hash -r
  if ! linked_here; then
    GLOBAL_BIN="$(npm prefix -g 2>/dev/null)/bin"
    DEST=/usr/local/bin/vdiskfs
    if [[ -e "$GLOBAL_BIN/vdiskfs" ]]; then SRC="$GLOBAL_BIN/vdiskfs"; else SRC="$BIN"; fi
    log "$GLOBAL_BIN is not on PATH; symlinking $DEST -> $SRC"
    "${SUDO[@]}" ln -sfn "$SRC" "$DEST"
    hash -r
  fi
fi
linked_here || die "vdiskfs is not on PATH after npm link (PATH=$PATH)"

# ---- 4. mount helper and systemd unit (root or sudo only) -------------------
# /sbin/mount.vdiskfs (mount -t vdiskfs, fstab type vdiskfs) and, where systemd runs, vdiskfs@.service.
if [[ $(id -u) -eq 0 ]]; then
  bash "$ROOT/scripts/system/install.sh" || die "installing the mount helper / systemd unit failed"
elif [[ ${#SUDO[@]} -gt 0 ]]; then
  "${SUDO[@]}" env PATH="$PATH" bash "$ROOT/scripts/system/install.sh" || die "installing the mount helper / systemd unit failed"
fi

# ---- man page and bash completion (as root; others: man -l man/vdiskfs.8, source the completion) ------
if [[ $(id -u) -eq 0 ]]; then
  COMPDIR=/etc/bash_completion.d
  [[ -d /usr/share/bash-completion/completions ]] && COMPDIR=/usr/share/bash-completion/completions
  for pair in "man/vdiskfs.8:/usr/local/share/man/man8/vdiskfs.8" "scripts/completion/vdiskfs.bash:$COMPDIR/vdiskfs"; do
    src="$ROOT/${pair%%:*}" dest="${pair#*:}"
    if ! cmp -s "$src" "$dest"; then
      install -D -m 0644 "$src" "$dest"
      log "installed $dest"
    fi
  done
fi
log "ok: $(command -v vdiskfs) -> $BIN"
