#!/bin/bash
# Boot the host's own systemd as PID 1 of fresh pid/mount/uts/ipc/cgroup namespaces, on a
# throw-away overlay of / (the host root is never written), sharing the host network.
# Root only; needs util-linux (unshare, nsenter, script) and systemd. Used by tests/units/sandbox.py.
#
#   SANDBOX_DIR=DIR sandbox.sh start   boot and wait until the manager runs; prints PID 1's host pid
#   SANDBOX_DIR=DIR sandbox.sh stop    power off (SIGRTMIN+4), SIGKILL fallback, remove our cgroups
#
# Inside: only journald runs (sdns.target); units are started by the tests. The host's /tmp is
# not visible (a fresh tmpfs), nor are other mounts than / itself: put files in through
# /proc/<pid1>/root. cgroups: the host's hybrid layout (v1 controllers + cgroup2 at unified/).
set -eu
B=${SANDBOX_DIR:?set SANDBOX_DIR}
SELF=$(readlink -f "$0")

case ${1:-} in
start)
  mkdir -p "$B/ovl" "$B/root"; rm -f "$B/launcher.pid" "$B/pid1"; : > "$B/cgroups"
  # script(1) gives PID 1 a pty for /dev/console (systemd wants one); it is logged to console.log.
  setsid script -qfec "$SELF _launch" "$B/console.log" </dev/null >/dev/null 2>&1 &
  echo $! > "$B/script.pid"
  P=
  for _ in $(seq 200); do            # up to 20 s for unshare to fork and exec systemd
    if [ -s "$B/launcher.pid" ]; then
      U=$(cat "$B/launcher.pid")
      C=$(tr -d ' \n' < /proc/$U/task/$U/children 2>/dev/null || true)
      if [ -n "$C" ] && [ "$(readlink /proc/$C/exe 2>/dev/null)" = /usr/lib/systemd/systemd ]; then P=$C; break; fi
    fi
    sleep 0.1
  done
  [ -n "$P" ] || { echo "systemd did not start; see $B/console.log" >&2; exit 1; }
  echo "$P" > "$B/pid1"
  # The bus socket appears first; then wait until boot is over (running, or degraded).
  timeout 60 bash -c "until s=\$(nsenter -t $P -a systemctl is-system-running 2>/dev/null); \
      [ \"\$s\" = running ] || [ \"\$s\" = degraded ]; do sleep 0.1; done" \
    || { echo "systemd did not finish booting; see $B/console.log" >&2; exit 1; }
  echo "$P"
  ;;
stop)
  [ -s "$B/pid1" ] || exit 0
  P=$(cat "$B/pid1")
  kill -RTMIN+4 "$P" 2>/dev/null || true     # poweroff; in a container PID 1 then exits
  timeout 30 tail --pid="$P" -f /dev/null || kill -KILL "$P" 2>/dev/null || true
  timeout 10 tail --pid="$(cat "$B/script.pid")" -f /dev/null || true
  for d in $(tac "$B/cgroups"); do       # deepest first; only the cgroups we made
    [ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
  rm -f "$B/pid1"
  ;;
_launch)   # host side: move into fresh child cgroups, so the new cgroup namespace's root is ours
  for d in /sys/fs/cgroup/*/; do
    d=${d%/}; n=${d##*/}
    case $n in systemd) key=name=systemd;; unified) key=;; *) key=$n;; esac
    cur=$(awk -F: -v k="$key" '$2==k {print $3}' /proc/self/cgroup); [ -n "$cur" ] || continue
    new=$d${cur%/}/nexus-sandbox-$$; mkdir -p "$new"
    if [ "$n" = cpuset ]; then
      cat "$d${cur%/}/cpuset.cpus" > "$new/cpuset.cpus"; cat "$d${cur%/}/cpuset.mems" > "$new/cpuset.mems"
    fi
    echo $$ > "$new/cgroup.procs"; echo "$new" >> "$B/cgroups"
  done
  echo $$ > "$B/launcher.pid"
  exec unshare --fork --pid --mount --uts --ipc --cgroup --mount-proc --propagation private "$SELF" _init
  ;;
_init)     # PID 1 of the new pid namespace: build the root, pivot into it, exec systemd
  R=$B/root; CONSOLE=$(tty || true)
  export LIBMOUNT_UTAB=$B/utab         # keep mount(8) away from the host's /run/mount/utab
  mount -t tmpfs -o mode=755 tmpfs "$B/ovl"; mkdir "$B/ovl/upper" "$B/ovl/work"
  mount -t overlay overlay -o "lowerdir=/,upperdir=$B/ovl/upper,workdir=$B/ovl/work" "$R"
  mount -t proc proc "$R/proc"
  mount --bind "$R/proc/sys" "$R/proc/sys"; mount -o remount,bind,ro "$R/proc/sys"  # no host sysctl writes
  mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$R/sys"                         # ro: no udev triggers
  mount -t tmpfs -o mode=755,nosuid,nodev,noexec tmpfs "$R/sys/fs/cgroup"
  for c in cpu cpuacct cpuset memory devices freezer blkio pids; do
    mkdir "$R/sys/fs/cgroup/$c"; mount -t cgroup -o "$c" cgroup "$R/sys/fs/cgroup/$c"
  done
  mkdir "$R/sys/fs/cgroup/systemd"; mount -t cgroup -o none,name=systemd cgroup "$R/sys/fs/cgroup/systemd"
  mkdir "$R/sys/fs/cgroup/unified"; mount -t cgroup2 -o nsdelegate cgroup2 "$R/sys/fs/cgroup/unified"
  mount -t tmpfs -o mode=755,nosuid tmpfs "$R/dev"        # private /dev: never the host's /dev/log
  for n in null zero full random urandom tty; do touch "$R/dev/$n"; mount --bind "/dev/$n" "$R/dev/$n"; done
  mkdir "$R/dev/pts" "$R/dev/shm"
  mount -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts "$R/dev/pts"; ln -s pts/ptmx "$R/dev/ptmx"
  mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$R/dev/shm"
  ln -s /proc/self/fd "$R/dev/fd"
  if [ -n "$CONSOLE" ] && [ -e "$CONSOLE" ]; then touch "$R/dev/console"; mount --bind "$CONSOLE" "$R/dev/console"; fi
  mount -t tmpfs -o mode=755,nosuid,nodev tmpfs "$R/run"
  mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$R/tmp"
  cat > "$R/etc/systemd/system/sdns.target" <<'EOT'
[Unit]
Description=test sandbox: journald only
Requires=systemd-journald.socket systemd-journald.service
After=systemd-journald.socket systemd-journald.service
AllowIsolate=yes
EOT
  mkdir -p "$R/etc/systemd/journald.conf.d"
  printf '[Journal]\nStorage=volatile\nForwardToConsole=yes\n' > "$R/etc/systemd/journald.conf.d/sandbox.conf"
  mkdir "$R/.oldroot"; cd "$R"; pivot_root . .oldroot; cd /; umount -l /.oldroot; rmdir /.oldroot
  exec env -i container=nexus-test TERM=dumb PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    /lib/systemd/systemd --system --unit=sdns.target --log-target=journal --show-status=yes
  ;;
*) echo "usage: SANDBOX_DIR=DIR $0 start|stop" >&2; exit 2 ;;
esac
