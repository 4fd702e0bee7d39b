// Package e2e holds the end-to-end tests of the builder: they build real
// images from images/minimal.yaml, check their structure with the standard
// tools and boot them under qemu with UEFI firmware. They run when
// BERTH_E2E=1 (make test sets it) and need root.
package e2e

// The probe is a test-only addition to the minimal image: a oneshot unit
// that runs once multi-user.target is reached on a VM with the test's
// second disk, prints what it finds as
// "BERTH-E2E key=value" lines on the serial console, leaves markers in the
// persistent places, and powers the VM off.
const probeScript = `#!/bin/sh
say() { printf 'BERTH-E2E %s\n' "$*"; }
# The probe runs only on a VM with the test's second disk (ext4, label E2E,
# read from its superblock: no udev timing), carrying payloads and a step
# script: the same images boot as cluster nodes, whose second disk is
# their seed, and there the probe does nothing.
[ "$(dd if=/dev/vdb bs=1 skip=1144 count=4 status=none 2>/dev/null | tr -d '\000')" = E2E ] || exit 0
mkdir -p /var/lib/berth-e2e
mkdir -p /run/e2e && mount -o ro /dev/vdb /run/e2e
boot=$(( $(cat /var/lib/berth-e2e/boots 2>/dev/null || echo 0) + 1 ))
echo $boot > /var/lib/berth-e2e/boots
say boot=$boot
say machine-id=$(cat /etc/machine-id)
if touch /berth-e2e-rw 2>/dev/null; then say root-ro=no; else say root-ro=yes; fi
say root-fstype=$(findmnt -no FSTYPE /)
say var-fstype=$(findmnt -no FSTYPE /var)
say etc-fstype=$(findmnt -no FSTYPE /etc)
say tmp-fstype=$(findmnt -no FSTYPE /tmp)
say home-dir=$(readlink -f /home)
say var-marker=$(cat /var/lib/berth-e2e/var-marker 2>/dev/null || echo none)
say etc-marker=$(cat /etc/berth-e2e-marker 2>/dev/null || echo none)
say root-marker=$(cat /root/berth-e2e-marker 2>/dev/null || echo none)
say home-marker=$(cat /home/berth-e2e-marker 2>/dev/null || echo none)
echo "boot-$boot" > /var/lib/berth-e2e/var-marker
echo "boot-$boot" > /etc/berth-e2e-marker
echo "boot-$boot" > /root/berth-e2e-marker
echo "boot-$boot" > /home/berth-e2e-marker
say var-size-kb=$(df -k --output=size /var | tail -1 | tr -d ' ')
say os-version=$(. /etc/os-release; echo $VERSION_ID)
say slot=$(tr ' ' '\n' < /proc/cmdline | sed -n 's/^berth.slot=//p')
# The loader sets LoaderBootCountPath only when it booted a counted entry;
# then systemd-bless-boot must run and remove the counter.
state=not-counted
if [ -e /sys/firmware/efi/efivars/LoaderBootCountPath-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f ]; then
	for i in $(seq 120); do
		state=$(systemctl show -p ActiveState --value systemd-bless-boot.service)
		[ "$state" = active ] && break
		sleep 1
	done
fi
say bless-state=$state
# The loader renamed the entry it counted and names the new file here.
# (efivarfs: 4 bytes of attributes, then UTF-16; efivarfs cannot seek.)
say counted-entry=$(cat /sys/firmware/efi/efivars/LoaderBootCountPath-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f 2>/dev/null | tail -c +5 | tr -d '\000')
say entries=$(ls /efi/loader/entries | tr '\n' ',')
say failed-units=$(systemctl list-units --failed --plain --no-legend | awk '{print $1}' | tr '\n' ',')
# Boot timing in microseconds since the kernel started (firmware and loader
# are measured on the host: TCG gives the loader no usable TSC).
say time-userspace-us=$(systemctl show -p UserspaceTimestampMonotonic --value)
say time-multi-user-us=$(systemctl show -p ActiveEnterTimestampMonotonic --value multi-user.target)
say update-status=$(berth-update status --json 2>&1 | tr -d '\n')
if [ -x /run/e2e/step.sh ]; then . /run/e2e/step.sh; fi
sync
say done
systemctl poweroff
`

const probeUnit = `[Unit]
Description=berth end-to-end probe
After=multi-user.target berth-health.service
# Probe only boots that passed the health gate: a failing gate reboots.
Requires=berth-health.service

[Service]
Type=oneshot
ExecStart=/usr/lib/berth-e2e/probe
StandardOutput=journal+console

[Install]
WantedBy=multi-user.target
`
