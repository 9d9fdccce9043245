#!/bin/bash
# Throwaway Debian 12 guest for the VM test tier: systemd as PID 1, pure cgroup v2 (cpuset cpu io
# memory pids), qemu in software emulation (TCG: KVM does not work on our machines), no network
# beyond the guest itself. Adapted from shared/recipes/vm-harness.sh.
#
#   vm-harness.sh image      print the image directory, building it first if needed (needs root and
#                            Debian's apt archive). Cached under $VM_CACHE (default
#                            /var/tmp/jobworkerd-vm)/img-<key>, where <key> hashes this script and
#                            EXTRA_PKGS: the image is rebuilt only when either changes.
#   vm-harness.sh run DIR    boot a copy-on-write guest of that image; DIR is shared over 9p at
#                            /mnt/host; once systemd is up the guest runs DIR/run.sh as root, writes
#                            DIR/out/{rc,run.log,boot.txt,journal.txt} and powers off. Exit status:
#                            run.sh's, 99 if the guest never reported one.
#   vm-harness.sh deps       install qemu, debootstrap and friends on this host if missing.
#
# Environment: EXTRA_PKGS (comma-separated Debian packages baked into the image, e.g. the .deb's
# Depends), VM_TIMEOUT (seconds for a whole run, default 900), VM_MEM (MiB, default 2048), VM_SMP
# (default 2), SSH_PORT (give the guest a host-only network and sshd, forwarded from
# 127.0.0.1:SSH_PORT, for interactive use with a DIR without run.sh:
# ssh -i $image/id_ci -p SSH_PORT root@127.0.0.1), MIRROR (apt mirror).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
SELF="$HERE/$(basename "$0")"
VM_CACHE=${VM_CACHE:-/var/tmp/jobworkerd-vm}
EXTRA=${EXTRA_PKGS:-}
# python3 for the guest's test driver; the rest is what the tests' jobs use (dd, ps, mountpoint),
# man-db for the checks that the .deb's man pages are found (man -w), and libnftables1, which the .deb
# depends on (the guest has no network to fetch it)
BASE_PKGS=systemd,systemd-sysv,udev,dbus,kmod,initramfs-tools,zstd,iproute2,procps,util-linux,coreutils,python3,ca-certificates,openssh-server,man-db,libnftables1
KEY=$( { cat "$SELF"; echo "$EXTRA"; } | sha256sum | cut -c1-12)
IMG=$VM_CACHE/img-$KEY

log() { echo "vm-harness: $*" >&2; }

deps() {
  "$(dirname "$SELF")/../../../scripts/apt-need.sh" vm-harness qemu-system-x86 qemu-utils debootstrap e2fsprogs openssh-client
}

build() {
  # Called with the lock held. Builds into a temporary directory, then renames: a cache entry that
  # exists is complete.
  deps
  local mirror=${MIRROR:-$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)}
  [ -n "$mirror" ] || mirror=$(awk '/^deb /{print $2; exit}' /etc/apt/sources.list)
  local T=$IMG.tmp R
  rm -rf "$T"; mkdir -p "$T"; R=$T/rootfs
  SECONDS=0
  timeout 900 debootstrap --variant=minbase --include="$BASE_PKGS${EXTRA:+,$EXTRA}" bookworm "$R" "$mirror" >"$T/debootstrap.log" 2>&1 \
    || { tail -20 "$T/debootstrap.log" >&2; log "debootstrap failed"; return 1; }
  log "debootstrap: ${SECONDS}s"; SECONDS=0
  echo MODULES=list > "$R/etc/initramfs-tools/conf.d/ci.conf"            # small initrd: just what root-on-virtio needs
  printf 'virtio_pci\nvirtio_blk\next4\ncrc32c_generic\n' >> "$R/etc/initramfs-tools/modules"
  cp /etc/resolv.conf "$R/etc/resolv.conf"
  timeout 600 chroot "$R" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends linux-image-amd64 >"$T/kernel.log" 2>&1 \
    || { tail -20 "$T/kernel.log" >&2; log "kernel install failed"; return 1; }
  log "kernel+initrd: ${SECONDS}s"; SECONDS=0
  echo ci-guest > "$R/etc/hostname"; printf '127.0.0.1 localhost\n127.0.1.1 ci-guest\n::1 localhost ip6-localhost ip6-loopback\n' > "$R/etc/hosts"
  echo '/dev/vda / ext4 rw 0 1' > "$R/etc/fstab"; echo 'nameserver 10.0.2.3' > "$R/etc/resolv.conf"
  chroot "$R" passwd -d root >/dev/null; mkdir -p "$R/etc/systemd/network" "$R/mnt/host"
  printf '[Match]\nName=en*\n[Network]\nDHCP=yes\n' > "$R/etc/systemd/network/10-dhcp.network"
  # the guest has no network (none at all unless SSH_PORT is given): keep apt from trying
  printf 'Acquire::Retries "0";\nAPT::Periodic::Enable "0";\n' > "$R/etc/apt/apt.conf.d/99ci"
  # a throwaway disk: dpkg need not fsync every file it unpacks (as in Debian's container images)
  echo force-unsafe-io > "$R/etc/dpkg/dpkg.cfg.d/ci-unsafe-io"
  rm -f "$R/var/lib/man-db/auto-update"   # no mandb run on each install (man -w needs no index)
  printf '[Unit]\nAfter=multi-user.target\n[Service]\nType=exec\nExecStart=/usr/local/sbin/ci-runner\nStandardOutput=journal+console\n[Install]\nWantedBy=multi-user.target\n' \
    > "$R/etc/systemd/system/ci-runner.service"
  cat > "$R/usr/local/sbin/ci-runner" <<'EOF'
#!/bin/sh
mountpoint -q /mnt/host || mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288 host /mnt/host || exit 0
[ -x /mnt/host/run.sh ] || exit 0          # no script: stay up for interactive use (SSH_PORT)
mkdir -p /mnt/host/out; state=$(systemctl is-system-running --wait)
{ echo "uptime_at_ready=$(cut -d' ' -f1 /proc/uptime) state=$state"; systemd-analyze; } > /mnt/host/out/boot.txt 2>&1
echo "ci-runner: running /mnt/host/run.sh"
timeout "$(cat /mnt/host/run.timeout 2>/dev/null || echo 840)" /mnt/host/run.sh > /mnt/host/out/run.log 2>&1; echo $? > /mnt/host/out/rc
echo "ci-runner: run.sh exited $(cat /mnt/host/out/rc)"
journalctl -b --no-pager -o short-monotonic > /mnt/host/out/journal.txt 2>&1; sync; systemctl poweroff
EOF
  chmod +x "$R/usr/local/sbin/ci-runner"
  # networking and sshd only for interactive use (run adds them on the kernel command line)
  chroot "$R" systemctl -q enable ci-runner.service
  chroot "$R" systemctl -q disable ssh.service ssh.socket systemd-networkd.service 2>/dev/null || true
  chroot "$R" systemctl -q mask systemd-networkd-wait-online.service apt-daily.timer apt-daily-upgrade.timer \
    e2scrub_all.timer e2scrub_reap.service fstrim.timer man-db.timer 2>/dev/null || true
  ssh-keygen -q -t ed25519 -N '' -f "$T/id_ci"; install -D -m600 "$T/id_ci.pub" "$R/root/.ssh/authorized_keys"
  cp "$R"/boot/vmlinuz-* "$T/vmlinuz"; cp "$R"/boot/initrd.img-* "$T/initrd.img"; rm -f "$R"/var/cache/apt/archives/*.deb
  rm -rf "$R/var/lib/apt/lists/"*   # nothing to fetch in the guest; apt installs local .debs only
  mkfs.ext4 -q -F -L root -d "$R" "$T/base.raw" 3G >&2; rm -rf "$R"
  log "image: ${SECONDS}s"
  rm -rf "$IMG"; mv "$T" "$IMG"
  # older images (another version of this script or of the .deb's dependencies) are dead weight
  find "$VM_CACHE" -maxdepth 1 -name 'img-*' ! -name "img-$KEY" ! -name '*.tmp' -mmin +60 -exec rm -rf {} + 2>/dev/null || true
}

image() {
  mkdir -p "$VM_CACHE"
  exec 9>"$VM_CACHE/lock"; flock 9          # one build at a time; others wait and reuse it
  if [ ! -f "$IMG/base.raw" ]; then
    local start; start=$(date +%s)
    log "building $IMG (EXTRA_PKGS=${EXTRA:-none})"
    build
    log "image build total: $(( $(date +%s) - start ))s"
  fi
  flock -u 9
  echo "$IMG"
}

run() {
  local D; D=$(realpath "$1")
  [ -f "$IMG/base.raw" ] || image >/dev/null
  rm -rf "$D/out"; mkdir -p "$D/out"
  local disk; disk=$(mktemp -d "${TMPDIR:-/tmp}/jobworkerd-vm-run.XXXXXX")
  trap 'rm -rf "$disk"' EXIT
  qemu-img create -q -f qcow2 -b "$IMG/base.raw" -F raw "$disk/run.qcow2"
  # no network device at all, unless SSH_PORT asks for sshd (host-only: restrict=on)
  local net=(-nic none) wants=""
  if [ -n "${SSH_PORT:-}" ]; then
    net=(-nic "user,model=virtio-net-pci,restrict=on,hostfwd=tcp:127.0.0.1:$SSH_PORT-:22")
    wants=" systemd.wants=systemd-networkd.service systemd.wants=ssh.service"
  fi
  SECONDS=0
  local rc=0
  timeout "${VM_TIMEOUT:-900}" qemu-system-x86_64 -accel tcg,thread=multi -cpu max -smp "${VM_SMP:-2}" -m "${VM_MEM:-2048}" \
    -nodefaults -no-user-config -display none -monitor none -no-reboot -serial "file:$D/out/serial.log" \
    -kernel "$IMG/vmlinuz" -initrd "$IMG/initrd.img" \
    -append "console=ttyS0 root=/dev/vda rw systemd.unified_cgroup_hierarchy=1 panic=-1$wants" \
    -drive "file=$disk/run.qcow2,if=virtio,format=qcow2,cache=unsafe" \
    -virtfs "local,path=$D,mount_tag=host,security_model=none,id=host" \
    "${net[@]}" || rc=$?
  echo "vm_wall_seconds=$SECONDS qemu_rc=$rc" > "$D/out/vm.txt"
  log "vm wall: ${SECONDS}s (qemu exit $rc)"
  cat "$D/out/boot.txt" 2>/dev/null >&2 || tail -30 "$D/out/serial.log" >&2 || true
  exit "$(cat "$D/out/rc" 2>/dev/null || echo 99)"
}

case "${1:-}" in
  deps) deps ;;
  image) image ;;
  run) [ -n "${2:-}" ] || { echo "usage: $0 run DIR" >&2; exit 2; }; run "$2" ;;
  *) echo "usage: $0 deps | image | run DIR" >&2; exit 2 ;;
esac
