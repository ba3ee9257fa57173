#!/usr/bin/env bash
# Installs the Debian packages the test suite runs against: real exporters
# (softflowd, pmacct), an independent decoder (tshark), nfdump, capture and
# namespace tools, the edge tools containment exports to (nftables, ipset,
# exabgp), FreeRADIUS and its radclient (a NAS and the RADIUS proxy in front
# of identity's accounting listener; the tests run freeradius with a
# configuration of their own, not the packaged service), and the DHCP servers
# and client of identity's lease tests (kea-dhcp4-server with its run_script
# hook, dnsmasq-base, isc-dhcp-client; curl for deploy/identity/wormsign-lease;
# again run by the tests, not as services), and Postfix with Cyrus SASL (the
# tests run a private Postfix instance as the ISP's relay that notices go
# through, STARTTLS and AUTH via Cyrus SASL sasldb; not the packaged service).
# Idempotent; skips what is already there.
set -euo pipefail
packages=(softflowd pmacct tshark nfdump tcpdump iproute2 clickhouse-server clickhouse-client nftables ipset exabgp chromium freeradius freeradius-utils kea-dhcp4-server dnsmasq-base isc-dhcp-client curl postfix libsasl2-modules sasl2-bin)
missing=()
for p in "${packages[@]}"; do
	dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "test-tools: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# tshark asks whether non-root users may capture; answer for it.
echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
# Postfix asks how mail is configured; the tests configure their own.
printf '%s\n' "postfix postfix/main_mailer_type select No configuration" \
	"postfix postfix/mailname string $(hostname -f 2>/dev/null || hostname)" | debconf-set-selections
apt-get update -qq
# The tests run FreeRADIUS, Kea, dnsmasq and Postfix with configurations of
# their own: keep the packages' services from starting (and taking 1812,
# 1813, 67 and 25 on the host) while they install.
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
	printf '#!/bin/sh\nexit 101\n' >"$policy"
	chmod 755 "$policy"
	trap 'rm -f "$policy"' EXIT
fi
apt-get install -y -qq "${missing[@]}" >/dev/null
# Should the packaged Postfix run all the same (policy-rc.d was someone
# else's and let it), stop it: the tests start their own, and nothing may
# listen on port 25.
if printf '%s\n' "${missing[@]}" | grep -qx postfix && postfix status >/dev/null 2>&1; then
	postfix stop >/dev/null 2>&1 || true
fi
