# bash completion for vdiskfs: subcommands, options, disks and snapshots (from `vdiskfs list --json` of the
# store named by --store, else the default store). Installed by scripts/setup.sh as
# /usr/share/bash-completion/completions/vdiskfs (or /etc/bash_completion.d/vdiskfs).

# Names from the store: `disks`, `snaps DISK` (snapshot names) or `refs` (disk@snap).
_vdiskfs_names() {
  local what=$1 disk=$2 store=() i
  for ((i = 1; i < COMP_CWORD; i++)); do
    [[ ${COMP_WORDS[i]} == --store ]] && store=(--store "${COMP_WORDS[i + 1]}")
  done
  "${COMP_WORDS[0]}" list --json "${store[@]}" 2>/dev/null | node -e '
    let s = ""; process.stdin.on("data", (d) => (s += d)).on("end", () => {
      let disks; try { disks = JSON.parse(s); } catch { return; }
      const [what, disk] = process.argv.slice(1);
      for (const d of disks) {
        if (what === "disks") console.log(d.name);
        else for (const sn of d.snapshots) {
          if (what === "refs") console.log(`${d.name}@${sn.name}`);
          else if (d.name === disk) console.log(sn.name);
        }
      }
    });' "$what" "$disk" 2>/dev/null
}

_vdiskfs() {
  local cur prev cmd i
  cur=${COMP_WORDS[COMP_CWORD]}
  prev=${COMP_WORDS[COMP_CWORD - 1]}
  local commands="mount unmount umount create delete resize snapshot delete-snapshot rollback clone attach detach repair list status backup restore replicate verify inspect merge check help"
  # The subcommand and the positional arguments before the cursor (options and their values skipped).
  local args=()
  for ((i = 1; i < COMP_CWORD; i++)); do
    case ${COMP_WORDS[i]} in
      --store | --pool-size | --block-store | --rados-pool | --rados-store | --ceph-conf | --readahead | --table-cache | -o | --options | --log-level | --output | --since | --as | --into | --block-size | --rows | --to-store | --to-command | --prefix | --keep) ((i++)) ;;
      -*) ;;
      *) args+=("${COMP_WORDS[i]}") ;;
    esac
  done
  cmd=${args[0]}

  case $prev in
    --store | --output | --to-store) mapfile -t COMPREPLY < <(compgen -f -- "$cur"); return ;;
    -o) [[ $cmd == mount ]] || mapfile -t COMPREPLY < <(compgen -f -- "$cur"); return ;; # mount: FUSE options
    --block-store) mapfile -t COMPREPLY < <(compgen -W "file leveldb rados" -- "$cur"); return ;;
    --log-level) mapfile -t COMPREPLY < <(compgen -W "fatal error warn info debug trace silent" -- "$cur"); return ;;
    --into) mapfile -t COMPREPLY < <(compgen -W "$(_vdiskfs_names disks)" -- "$cur"); return ;;
    --since) [[ $cmd == replicate ]] && mapfile -t COMPREPLY < <(compgen -W "$(_vdiskfs_names snaps "${args[1]}")" -- "$cur") && return
      [[ ${args[1]} == *@* ]] && mapfile -t COMPREPLY < <(compgen -W "$(_vdiskfs_names snaps "${args[1]%@*}")" -- "$cur"); return ;;
    --as | --pool-size | --readahead | --table-cache | --block-size | --rows | --to-command | --prefix | --keep) return ;;
  esac

  if [[ -z $cmd ]]; then
    if [[ $cur == -* ]]; then
      mapfile -t COMPREPLY < <(compgen -W "-p --progress -q --quiet -h --help -V --version" -- "$cur")
    else
      mapfile -t COMPREPLY < <(compgen -W "$commands" -- "$cur")
      mapfile -t -O "${#COMPREPLY[@]}" COMPREPLY < <(compgen -d -- "$cur") # `vdiskfs DIR` mounts DIR
    fi
    return
  fi
  if [[ $cur == -* ]]; then
    local opts="--store --json -p -q --help"
    case $cmd in
      mount) opts="--store --pool-size --block-store --rados-pool --rados-store --ceph-conf --readahead --table-cache -f --foreground -o --log-level --help" ;;
      create) opts+=" --block-size --block-store" ;;
      delete) opts+=" -r --recursive" ;;
      backup) opts+=" -o --output --since" ;;
      restore) opts+=" --as --into --force --resize --create --block-store" ;;
      replicate) opts+=" --to-store --as --to-command --since --prefix --keep --force" ;;
      rollback) opts+=" -r --destroy-newer" ;;
      verify) opts="--json --against --store -p -q --help" ;;
      merge) opts="-o --output --json -p -q --help" ;;
      inspect) opts="--json --verify --rows --help" ;;
      check) opts+=" --repair --verify-data" ;;
      unmount | umount | help) opts="--help" ;;
    esac
    mapfile -t COMPREPLY < <(compgen -W "$opts" -- "$cur")
    return
  fi
  local n=${#args[@]} # the position of the word being completed, 1 = first argument
  case $cmd in
    mount | unmount | umount) mapfile -t COMPREPLY < <(compgen -d -- "$cur") ;;
    delete | resize | snapshot | replicate) ((n == 1)) && mapfile -t COMPREPLY < <(compgen -W "$(_vdiskfs_names disks)" -- "$cur") ;;
    delete-snapshot | rollback | clone)
      if ((n == 1)); then mapfile -t COMPREPLY < <(compgen -W "$(_vdiskfs_names disks)" -- "$cur")
      elif ((n == 2)); then mapfile -t COMPREPLY < <(compgen -W "$(_vdiskfs_names snaps "${args[1]}")" -- "$cur")
      fi ;;
    backup) ((n == 1)) && mapfile -t COMPREPLY < <(compgen -W "$(_vdiskfs_names refs)" -- "$cur") ;;
    restore | verify | inspect) ((n == 1)) && mapfile -t COMPREPLY < <(compgen -f -- "$cur") ;;
    merge) mapfile -t COMPREPLY < <(compgen -f -- "$cur") ;;
    attach) ((n >= 2)) && mapfile -t COMPREPLY < <(compgen -f -- "$cur") ;;
    repair)
      if ((n == 1)); then mapfile -t COMPREPLY < <(compgen -W "$(_vdiskfs_names disks)" -- "$cur")
      else mapfile -t COMPREPLY < <(compgen -f -- "$cur")
      fi ;;
    help) mapfile -t COMPREPLY < <(compgen -W "$commands" -- "$cur") ;;
  esac
}
complete -F _vdiskfs vdiskfs
