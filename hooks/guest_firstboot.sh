#!/bin/sh
# vmseal's first-boot agent, installed by the seal. virt-sysprep's customize step runs this (--run) inside
# its libguestfs appliance, in the guest's own root (never from the host side), after uploading the agent
# (hooks/vmseal_firstboot.sh) to /tmp/vmseal-firstboot in the guest. On a systemd guest it installs
#   /usr/local/lib/vmseal/firstboot            the agent (SSH host keys when missing; a cidata seed's
#                                              vmseal/ identity on guests without cloud-init)
#   /etc/systemd/system/vmseal-firstboot.service  enabled: every boot, before ssh and the network
# Guests without systemd get nothing (the audit then says whether their sshd can start).
# Only shell built-ins and mkdir, cat, chmod, ln, rm: what the smallest guests have.
AGENT_SRC=/tmp/vmseal-firstboot
UNIT=/etc/systemd/system/vmseal-firstboot.service
if [ ! -f "$AGENT_SRC" ]; then
  echo "vmseal-firstboot: the agent was not uploaded to $AGENT_SRC"
  exit 1
fi
if [ ! -d /etc/systemd/system ]; then
  echo "vmseal-firstboot: not a systemd guest: no first-boot agent installed"
  rm -f "$AGENT_SRC"
  exit 0
fi
mkdir -p /usr/local/lib/vmseal /etc/systemd/system/multi-user.target.wants
cat "$AGENT_SRC" > /usr/local/lib/vmseal/firstboot
chmod 0755 /usr/local/lib/vmseal/firstboot
rm -f "$AGENT_SRC"
cat > "$UNIT" <<'EOF'
[Unit]
Description=vmseal first boot: SSH host keys, identity from a cidata seed
DefaultDependencies=no
After=local-fs.target systemd-remount-fs.service systemd-udevd.service systemd-udev-trigger.service
Wants=network-pre.target
Before=network-pre.target ssh.service ssh.socket sshd.service shutdown.target
Conflicts=shutdown.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/lib/vmseal/firstboot
StandardOutput=journal+console
TimeoutStartSec=120

[Install]
WantedBy=multi-user.target
EOF
chmod 0644 "$UNIT"
ln -sf "$UNIT" /etc/systemd/system/multi-user.target.wants/vmseal-firstboot.service
echo "vmseal-firstboot: installed"
exit 0
