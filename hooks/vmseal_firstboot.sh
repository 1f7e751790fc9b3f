#!/bin/sh
# vmseal's first-boot agent, in a VM made from a vmseal template. The seal installs it (inside the
# libguestfs appliance, hooks/guest_firstboot.sh) as /usr/local/lib/vmseal/firstboot, run by
# vmseal-firstboot.service at every boot before ssh and the network; cheap when there is nothing to do.
#
# 1. SSH host keys: the seal removes them (each VM must have its own), and Debian's ssh.service does not
#    make new ones (its ExecStartPre "sshd -t" fails: "no hostkeys available"). When sshd is installed
#    and no host key exists, `ssh-keygen -A` makes them.
# 2. Guests without cloud-init: when a filesystem labelled "cidata" (a NoCloud seed, ISO 9660 or vfat)
#    is attached, apply its vmseal/ files once per vmseal/instance-id: vmseal/hostname (/etc/hostname
#    and the running host name), vmseal/authorized_keys (added to root's), vmseal/root_password_hash
#    (chpasswd -e, on stdin). Guests with cloud-init read the same seed's meta-data/user-data themselves.
# POSIX sh and the guest's own tools; every step is best effort and says what it did on stdout (journal).
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH
STATE=/var/lib/vmseal
say() { echo "vmseal-firstboot: $*"; }

host_keys() {
  command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ] || return 0
  command -v ssh-keygen >/dev/null 2>&1 || { say "sshd without ssh-keygen: no host keys made"; return 0; }
  for k in /etc/ssh/ssh_host_*_key; do
    [ -f "$k" ] && return 0
  done
  if ssh-keygen -A; then say "made SSH host keys"; else say "ssh-keygen -A failed"; fi
}

find_seed() {
  for l in cidata CIDATA; do
    if [ -e "/dev/disk/by-label/$l" ]; then
      seed="/dev/disk/by-label/$l"
      return 0
    fi
  done
  seed=$(blkid -l -o device -t LABEL=cidata 2>/dev/null || true)
  [ -n "$seed" ] || seed=$(blkid -l -o device -t LABEL=CIDATA 2>/dev/null || true)
  [ -n "$seed" ]
}

one_line() { # file -> its first line, or nothing; refuses control characters
  [ -f "$1" ] || return 0
  head -n 1 "$1" | tr -d '\r\n' | grep -v '[[:cntrl:]]' || true
}

apply_seed() {
  mnt=$(mktemp -d /run/vmseal-seed.XXXXXX) || return 0
  if ! mount -o ro "$seed" "$mnt" 2>/dev/null; then
    say "cannot mount the seed $seed"
    rmdir "$mnt"
    return 0
  fi
  d="$mnt/vmseal"
  id=$(one_line "$d/instance-id")
  if [ -z "$id" ]; then
    say "the seed has no vmseal/instance-id: nothing applied"
  elif [ "$id" = "$(one_line "$STATE/instance-id")" ]; then
    say "seed of instance $id already applied"
  else
    h=$(one_line "$d/hostname")
    if [ -n "$h" ] && printf '%s' "$h" | grep -Eq '^[A-Za-z0-9]([A-Za-z0-9.-]{0,252})$'; then
      printf '%s\n' "$h" > /etc/hostname
      hostname "$h" 2>/dev/null || true
      if [ -f /etc/hosts ] && grep -q '^127\.0\.1\.1[[:space:]]' /etc/hosts; then
        sed -i "s/^127\.0\.1\.1[[:space:]].*/127.0.1.1 $h/" /etc/hosts
      else
        printf '127.0.1.1 %s\n' "$h" >> /etc/hosts
      fi
      say "host name $h"
    elif [ -n "$h" ]; then
      say "refused the seed's host name (not a host name)"
    fi
    if [ -f "$d/authorized_keys" ]; then
      umask 077
      mkdir -p /root/.ssh
      touch /root/.ssh/authorized_keys
      n=0
      while IFS= read -r key || [ -n "$key" ]; do
        case "$key" in ""|"#"*) continue;; esac
        grep -qxF -- "$key" /root/.ssh/authorized_keys || { printf '%s\n' "$key" >> /root/.ssh/authorized_keys; n=$((n + 1)); }
      done < "$d/authorized_keys"
      chmod 700 /root/.ssh
      chmod 600 /root/.ssh/authorized_keys
      say "$n key(s) added to root's authorized_keys"
    fi
    p=$(one_line "$d/root_password_hash")
    if [ -n "$p" ]; then
      if printf 'root:%s\n' "$p" | chpasswd -e; then say "root password set"; else say "root password not set"; fi
    fi
    mkdir -p "$STATE"
    chmod 700 "$STATE"
    printf '%s\n' "$id" > "$STATE/instance-id"
  fi
  umount "$mnt" 2>/dev/null
  rmdir "$mnt" 2>/dev/null
  return 0
}

seed_identity() {
  [ -x /usr/bin/cloud-init ] && return 0  # cloud-init reads the seed itself
  for m in ata_piix sr_mod isofs vfat; do modprobe -q "$m" 2>/dev/null; done
  command -v udevadm >/dev/null 2>&1 && udevadm settle -t 15 2>/dev/null
  seed=""
  tries=0
  while ! find_seed; do
    tries=$((tries + 1))
    [ $tries -le 15 ] || return 0
    ls /dev/sr* >/dev/null 2>&1 || return 0  # no CD-ROM drive and no labelled disk: no seed
    sleep 1
  done
  apply_seed
}

seed_identity  # first: the host keys' comments then carry the VM's host name
host_keys
exit 0
