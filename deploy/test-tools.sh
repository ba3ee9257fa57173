#!/usr/bin/env bash
# Installs the Debian packages the test suite runs against: real exporters
# (softflowd, pmacct), an independent decoder (tshark), nfdump, capture and
# namespace tools, the edge tools containment exports to (nftables, ipset,
# exabgp), FreeRADIUS and its radclient (a NAS and the RADIUS proxy in front
# of identity's accounting listener; the tests run freeradius with a
# configuration of their own, not the packaged service), and the DHCP servers
# and client of identity's lease tests (kea-dhcp4-server with its run_script
# hook, dnsmasq-base, isc-dhcp-client; curl for deploy/identity/wormsign-lease;
# again run by the tests, not as services). Idempotent; skips what is already
# there.
set -euo pipefail
packages=(softflowd pmacct tshark nfdump tcpdump iproute2 clickhouse-server clickhouse-client nftables ipset exabgp chromium freeradius freeradius-utils kea-dhcp4-server dnsmasq-base isc-dhcp-client curl)
missing=()
for p in "${packages[@]}"; do
	dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "test-tools: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# tshark asks whether non-root users may capture; answer for it.
echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
apt-get update -qq
# The tests run FreeRADIUS, Kea and dnsmasq with configurations of their
# own: keep the packages' services from starting (and taking 1812, 1813
# and 67 on the host) while they install.
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
	printf '#!/bin/sh\nexit 101\n' >"$policy"
	chmod 755 "$policy"
	trap 'rm -f "$policy"' EXIT
fi
apt-get install -y -qq "${missing[@]}" >/dev/null
