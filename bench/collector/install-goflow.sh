#!/usr/bin/env bash
# Installs goflow v3.5.0 (the collector wormsign is compared with) as
# $(go env GOPATH)/bin/goflow unless it is there already. `go install
# pkg@version` needs the module proxy's version list; where that is refused,
# the same version is built from a throw-away module instead.
set -euo pipefail
bin="$(go env GOPATH)/bin/goflow"
if [ -x "$bin" ]; then
	echo "$bin"
	exit 0
fi
if go install github.com/cloudflare/goflow/v3/cmd/goflow@v3.5.0 >&2; then
	echo "$bin"
	exit 0
fi
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cd "$dir"
cat > go.mod <<'MOD'
module goflowbuild

go 1.21

require github.com/cloudflare/goflow/v3 v3.5.0
MOD
printf '//go:build tools\n\npackage tools\n\nimport _ "github.com/cloudflare/goflow/v3/cmd/goflow"\n' > tools.go
go mod tidy >&2
mkdir -p "$(dirname "$bin")"
go build -o "$bin" github.com/cloudflare/goflow/v3/cmd/goflow >&2
echo "$bin"
