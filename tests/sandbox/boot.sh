#!/bin/bash
# Boot a real systemd as PID 1 of fresh namespaces, on a throw-away overlay of /.
#
#   boot.sh [--overlay PATH]... NAME CGROUP_DIR
#
# NAME          host name inside, also used in messages ([A-Za-z0-9-], at most 63 chars)
# CGROUP_DIR    a cgroup v2 directory to create and become the sandbox's cgroup root
# --overlay P   P lives on a mount other than / or under /tmp, which the
#               sandbox replaces (e.g. the repository on its own
#               file system): give it its own overlay at the same path, so it is
#               visible and writable inside while writes still never reach the host
#
# Runs in the foreground until systemd dies; the caller kills it by SIGKILL to the
# process it started (unshare's --kill-child takes PID 1, and with it the whole PID
# namespace, along) or by writing 1 to CGROUP_DIR/cgroup.kill, and then removes
# CGROUP_DIR. Start it under `setpriv --pdeathsig KILL` so that it dies with its caller.
# Nothing it mounts is visible outside: every mount is made in a private mount namespace.
set -euo pipefail
exec 2>&1 # one console stream for whoever reads the output

die() { echo "boot.sh: $*"; exit 1; }

overlays=()
while [[ $# -gt 0 && $1 == --* ]]; do
    case $1 in
    --overlay) overlays+=("$2"); shift 2 ;;
    --stage2) stage2=1; shift ;;
    *) die "unknown option $1" ;;
    esac
done
[[ $# -eq 2 ]] || die "usage: boot.sh [--overlay PATH]... NAME CGROUP_DIR"
name=$1 cgroup=$2
[[ $name =~ ^[A-Za-z0-9-]{1,63}$ ]] || die "bad name '$name'"
for p in "${overlays[@]}"; do
    # overlayfs takes ':' and ',' as separators in its options
    [[ $p == /* && $p != *[:,]* ]] || die "bad overlay path '$p'"
done

if [[ -z ${stage2:-} ]]; then
    [[ $EUID -eq 0 ]] || die "must run as root"
    [[ -x /lib/systemd/systemd ]] || die "/lib/systemd/systemd not installed"
    for cmd in unshare setpriv pivot_root ip findmnt mount umount hostname; do
        command -v "$cmd" >/dev/null || die "$cmd not found"
    done
    [[ $(stat -f -c %T "$(dirname "$cgroup")") == cgroup2fs ]] ||
        die "$(dirname "$cgroup") is not a cgroup2 file system"
    mkdir -p "$cgroup"
    # Everything started from here on lives below this cgroup, and unshare --cgroup
    # makes it the root that systemd sees.
    echo $$ >"$cgroup/cgroup.procs"
    args=()
    for p in "${overlays[@]}"; do args+=(--overlay "$p"); done
    exec unshare --pid --fork --mount --uts --ipc --net --cgroup \
        --propagation private --kill-child -- \
        /bin/bash "$0" --stage2 "${args[@]}" "$name" "$cgroup"
fi

# Stage 2: PID 1 of the new PID namespace, still on the host's root.

# The staging tmpfs hides /run of this (private) mount namespace only; the overlay's
# lowerdir=/ sees the root file system itself, not the mounts on it.
stage=/run
for p in "${overlays[@]}"; do
    [[ $p/ != "$stage"/* ]] || die "--overlay $p: under $stage, which stage 2 hides"
done
mount -t tmpfs -o mode=0755 sockhook-sandbox "$stage"
mkdir -p "$stage/root/upper" "$stage/root/work" "$stage/new"
mount -t overlay -o "lowerdir=/,upperdir=$stage/root/upper,workdir=$stage/root/work" \
    sockhook-root "$stage/new"
new=$stage/new

mount -t proc -o nosuid,nodev,noexec proc "$new/proc"
for p in sys sysrq-trigger irq bus fs; do
    if [[ -e $new/proc/$p ]]; then
        mount --bind "$new/proc/$p" "$new/proc/$p"
        mount -o remount,bind,ro "$new/proc/$p"
    fi
done

mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$new/sys"
# In the new cgroup namespace this shows CGROUP_DIR as the root of the hierarchy.
mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 "$new/sys/fs/cgroup"

mount -t tmpfs -o mode=0755,nosuid,size=4m sockhook-dev "$new/dev"
for d in null zero full random urandom tty; do
    touch "$new/dev/$d"
    mount --bind "/dev/$d" "$new/dev/$d"
done
mkdir -m 0755 "$new/dev/pts"
mkdir -m 1777 "$new/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5,nosuid,noexec devpts "$new/dev/pts"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$new/dev/shm"
ln -s pts/ptmx "$new/dev/ptmx"
ln -s /proc/self/fd "$new/dev/fd"
ln -s /proc/self/fd/0 "$new/dev/stdin"
ln -s /proc/self/fd/1 "$new/dev/stdout"
ln -s /proc/self/fd/2 "$new/dev/stderr"

mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs "$new/run"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$new/tmp"

# Last, so that they sit on top of the fresh /tmp and /run.
i=0
for p in "${overlays[@]}"; do
    [[ -d $p ]] || die "--overlay $p: no such directory"
    # An overlay of / shows an empty mount point where another file system is
    # mounted, and the sandbox's fresh /tmp hides what lies under the host's
    # (a CI checkout in /tmp): both need an overlay of their own.
    if [[ $p/ != /tmp/* && $(findmnt -n -o TARGET --target "$p") == / ]]; then
        continue
    fi
    i=$((i + 1))
    mkdir -p "$stage/extra$i/upper" "$stage/extra$i/work" "$new$p"
    mount -t overlay -o "lowerdir=$p,upperdir=$stage/extra$i/upper,workdir=$stage/extra$i/work" \
        sockhook-extra "$new$p"
done

# These writes land in the overlay's upper layer, i.e. on the staging tmpfs.
rm -f "$new/etc/machine-id"
tr -d '-' </proc/sys/kernel/random/uuid >"$new/etc/machine-id"
echo "$name" >"$new/etc/hostname"
printf '127.0.1.1\t%s\n' "$name" >>"$new/etc/hosts"
hostname "$name"

ip link set lo up

cd "$new"
# Stack the old root on top of the new one and detach it: no directory for it needed.
pivot_root . .
umount -l .
cd /
# systemd makes / shared only outside containers; a real host has it shared,
# and LoadCredential= for a User= service needs it (its credentials mount
# otherwise stays in a private namespace, leaving an empty, root-only dir).
mount --make-rshared /

# Kernel modules, raw I/O, the clock, the kernel log and MAC policy belong to the host.
exec env -i container=sockhook-test PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    setpriv --bounding-set -sys_module,-sys_rawio,-sys_time,-sys_pacct,-syslog,-mac_admin,-mac_override,-wake_alarm,-block_suspend \
    -- /lib/systemd/systemd --unit=basic.target
