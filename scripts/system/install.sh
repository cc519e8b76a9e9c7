#!/usr/bin/env bash
# Install this checkout's vdiskfs into the system: the mount helper /sbin/mount.vdiskfs (`mount -t vdiskfs`,
# fstab type `vdiskfs`) and, where systemd runs (/run/systemd/system exists), the unit
# /etc/systemd/system/vdiskfs@.service. Both get the absolute paths of node and of dist/cli/main.js, so they
# work with the minimal PATH of mount(8) and systemd. Idempotent; quiet unless it installs something.
# scripts/setup.sh runs it when it runs as root or with sudo.
#
#   scripts/system/install.sh [--root DIR] [--systemd yes|no|auto]
#
# --root DIR installs under DIR instead of / (and runs no systemctl); --systemd forces the unit on or off.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CHECKOUT=$(cd "$HERE/../.." && pwd)
DEST=""
SYSTEMD=auto
while [[ $# -gt 0 ]]; do
  case "$1" in
    --root) DEST=${2:?--root needs a directory}; shift ;;
    --systemd) SYSTEMD=${2:?--systemd needs yes, no or auto}; shift ;;
    -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "install.sh: unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done
if [[ $SYSTEMD == auto ]]; then
  if [[ -d /run/systemd/system ]]; then SYSTEMD=yes; else SYSTEMD=no; fi
fi

NODE=$(command -v node) || { echo "install.sh: node not found on PATH" >&2; exit 1; }
CLI="$CHECKOUT/dist/cli/main.js"
[[ -f $CLI ]] || { echo "install.sh: $CLI missing: run npm run build first" >&2; exit 1; }
for p in "$NODE" "$CLI"; do
  # Written unquoted into the unit and inside '…' into the helper.
  [[ $p =~ ^[A-Za-z0-9_./@+-]+$ ]] || { echo "install.sh: cannot install for a path with spaces or quotes: $p" >&2; exit 1; }
done

CHANGED=0
# install_file SRC DEST MODE: SRC with @NODE@ and @CLI@ filled in, written only when DEST differs.
install_file() {
  local want
  want=$(sed -e "s|@NODE@|$NODE|g" -e "s|@CLI@|$CLI|g" "$1")
  if [[ -f $2 && "$(cat "$2")" == "$want" && $(stat -c %a "$2") == "$3" ]]; then return 0; fi
  mkdir -p "$(dirname "$2")"
  printf '%s\n' "$want" >"$2.tmp.$$"
  chmod "$3" "$2.tmp.$$"
  mv -f "$2.tmp.$$" "$2"
  echo "setup: installed $2"
  CHANGED=1
}

install_file "$HERE/mount.vdiskfs" "$DEST/sbin/mount.vdiskfs" 755
if [[ $SYSTEMD == yes ]]; then
  install_file "$HERE/vdiskfs@.service" "$DEST/etc/systemd/system/vdiskfs@.service" 644
  if [[ $CHANGED -eq 1 && -z $DEST && -d /run/systemd/system ]]; then systemctl daemon-reload; fi
fi
