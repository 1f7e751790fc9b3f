#!/bin/sh
# vmseal's post-seal audit. virt-sysprep's customize step runs it (--run) last, inside the same
# appliance session as the seal (no extra launch), in the guest (chroot into the guest's filesystems,
# inside the libguestfs appliance), after every identity operation (only lvm-uuids runs later). POSIX
# sh and common tools only. It reports what the guest is, then one line per item:
#   vmseal-guest {"id": ..., "version_id": ..., "pretty_name": ...}
#   vmseal-audit <ok|FAIL> <item>: <detail>
# Exits 1 if any item failed: virt-sysprep then fails and prints these lines. The expected host
# name is in /tmp/vmseal-audit-hostname (written by --write just before).
#
# The same lines are written to vmseal's report disk, a small raw disk the host's helper adds to the
# appliance after the guest's own (it starts with REPORT_MAGIC): that is how they reach the host when
# virt-sysprep succeeds, without anything on the host reading the guest's files. They are the guest's
# word about itself (its own /bin/sh runs this): the app records them, and trusts them for nothing.
REPORT_MAGIC=VMSEAL-REPORT-V1
REPORT_FILE=/tmp/vmseal-report.$$
: > "$REPORT_FILE"
say() { echo "$1"; echo "$1" >> "$REPORT_FILE"; }
HOSTNAME_WANTED=$(cat /tmp/vmseal-audit-hostname 2>/dev/null)
HOSTNAME_WANTED="${HOSTNAME_WANTED:-localhost}"
failed=0
report() { # ok|FAIL item detail
  say "vmseal-audit $1 $2: $3"
  [ "$1" = ok ] || failed=1
}
release=/etc/os-release
[ -f "$release" ] || release=/usr/lib/os-release
field() { [ -f "$release" ] && sed -n "s/^$1=//p" "$release" | head -n 1 | tr -d '"\\' | tr -cd ' -~' | head -c 200; }
say "vmseal-guest {\"id\": \"$(field ID)\", \"version_id\": \"$(field VERSION_ID)\", \"pretty_name\": \"$(field PRETTY_NAME)\"}"
found=""
add() { found="${found:+$found, }$1"; }
check_empty() { # item
  if [ -z "$found" ]; then report ok "$1" ""; else report FAIL "$1" "$found"; fi
  found=""
}
for p in /etc/machine-id /var/lib/dbus/machine-id; do
  if [ -L "$p" ] || [ ! -f "$p" ]; then report ok "machine-id $p" "absent or a link"; continue; fi
  c=$(head -c 100 "$p" | tr -d ' \n')
  case "$c" in ""|uninitialized) report ok "machine-id $p" "empty";; *) report FAIL "machine-id $p" "content '$c'";; esac
done
for f in /etc/ssh/ssh_host_*; do [ -f "$f" ] && add "$f"; done
check_empty "ssh host keys"
for f in /etc/udev/rules.d/70-persistent-net.rules /etc/udev/rules.d/75-persistent-net-generator.rules; do
  [ -f "$f" ] && add "$f"
done
check_empty "persistent net rules"
MAC='([0-9a-fA-F]{2}[:-]){5}[0-9a-fA-F]{2}'
pinned() { # key-regex files...
  key="$1"; shift
  for f in "$@"; do
    [ -f "$f" ] && grep -Eq "$key" "$f" && grep -Eq "$MAC" "$f" && add "$f"
  done
}
pinned '^[[:space:]]*(HWADDR|MACADDR)[[:space:]]*=' /etc/sysconfig/network-scripts/ifcfg-*
pinned '^[[:space:]]*(cloned-)?mac-address[[:space:]]*=' /etc/NetworkManager/system-connections/*
pinned '^[[:space:]]*hwaddress([[:space:]]|$)' /etc/network/interfaces /etc/network/interfaces.d/*
pinned '^[[:space:]]*macaddress[[:space:]]*:' /etc/netplan/*
pinned '^[[:space:]]*MACAddress[[:space:]]*=' /etc/systemd/network/*
check_empty "MAC pinning in network configs"
h=""
[ -f /etc/hostname ] && h=$(tr -d ' \n' < /etc/hostname)
case "$h" in ""|"$HOSTNAME_WANTED") report ok hostname "$h";;
  *) report FAIL hostname "/etc/hostname is '$h', expected '$HOSTNAME_WANTED'";; esac
for f in /var/lib/dhcp/* /var/lib/dhclient/* /var/lib/NetworkManager/*.lease /var/lib/systemd/netif/leases/* \
         /var/lib/dhcpcd/*; do
  [ -f "$f" ] && add "$f"
done
check_empty "DHCP leases"
if [ -d /var/log ]; then
  n=0
  old_ifs=$IFS
  IFS='
'
  for f in $(find /var/log -type f 2>/dev/null); do
    if [ -s "$f" ] && [ $n -lt 20 ]; then add "$f"; n=$((n + 1)); fi
  done
  IFS=$old_ifs
fi
check_empty "log files empty"
for home in /root /home/*; do
  [ -d "$home" ] || continue
  for f in "$home"/.*history "$home"/.lesshst; do [ -f "$f" ] && add "$f"; done
done
check_empty "shell histories"
for f in /var/lib/systemd/random-seed /var/lib/random-seed /var/lib/urandom/random-seed; do [ -f "$f" ] && add "$f"; done
check_empty "random seed"
[ -f /etc/lvm/devices/system.devices ] && add /etc/lvm/devices/system.devices
check_empty "LVM system.devices"
# sshd can start at first boot: the seal removed its host keys (each VM must make its own), and some
# distributions' sshd does not make them (Debian's ssh.service fails "sshd -t": no hostkeys available).
ITEM="sshd can start at first boot"
sshd_bin=""
for b in /usr/sbin/sshd /usr/bin/sshd /sbin/sshd; do [ -f "$b" ] && { sshd_bin=$b; break; }; done
keys=""
for f in /etc/ssh/ssh_host_*_key; do [ -f "$f" ] && keys=1; done
if [ -z "$sshd_bin" ]; then
  report ok "$ITEM" "no sshd"
elif [ -f /usr/local/lib/vmseal/firstboot ] && [ -L /etc/systemd/system/multi-user.target.wants/vmseal-firstboot.service ]; then
  report ok "$ITEM" "vmseal-firstboot.service makes its host keys"
elif [ -f /usr/bin/cloud-init ]; then
  report ok "$ITEM" "cloud-init makes its host keys"
elif [ -f /usr/lib/systemd/system/sshd-keygen@.service ] || [ -f /lib/systemd/system/sshd-keygen@.service ] ||
     [ -f /usr/lib/systemd/system/sshd-keygen.service ] || [ -f /lib/systemd/system/sshd-keygen.service ]; then
  report ok "$ITEM" "the distribution's sshd-keygen unit makes its host keys"
elif [ -n "$keys" ]; then
  report ok "$ITEM" "its host keys were kept"
else
  report FAIL "$ITEM" "$sshd_bin has no host keys and nothing makes them at first boot"
fi
report_dev=""
for d in /dev/sd* /dev/vd* /dev/xvd* /dev/hd*; do
  [ -b "$d" ] || continue
  [ "$(head -c 16 "$d" 2>/dev/null)" = "$REPORT_MAGIC" ] && report_dev=$d
done
if [ -n "$report_dev" ]; then
  { echo "$REPORT_MAGIC"; head -c 65536 "$REPORT_FILE"; } > "$report_dev"
fi
rm -f "$REPORT_FILE"
exit $failed
