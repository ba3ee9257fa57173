#!/usr/bin/env bash
# Installs goflow2 v2.2.6 (github.com/netsampler/goflow2/v2, goflow v3's
# maintained successor) from the module proxy into a directory under
# ${TMPDIR:-/tmp} unless it is there already, and prints its path. Nothing
# of it enters the repository.
set -euo pipefail
version=v2.2.6
dir="${TMPDIR:-/tmp}/wormsign-bench-goflow2-$version"
bin="$dir/goflow2"
if [ -x "$bin" ]; then
	echo "$bin"
	exit 0
fi
mkdir -p "$dir"
GOBIN="$dir" go install "github.com/netsampler/goflow2/v2/cmd/goflow2@$version" >&2
echo "$bin"
