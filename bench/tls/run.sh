#!/usr/bin/env bash
# Client-side TLS 1.3 receive throughput of rustls (in memory, no network), built with rustls at
# opt-level 3 and 0, three times each, alternating. Needs openssl (a throwaway CA and certificate).
# Run from anywhere:  bench/tls/run.sh [MB]
set -euo pipefail
cd "$(dirname "$0")"
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
q() { openssl "$@" >/dev/null 2>&1; }
q req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$dir/ca.key" -out "$dir/ca.pem" -days 2 -subj "/CN=bench ca"
q req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$dir/key.pem" -out "$dir/leaf.csr" -subj "/CN=localhost"
printf 'subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n' > "$dir/ext.cnf"
q x509 -req -in "$dir/leaf.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial -out "$dir/cert.pem" -days 2 -extfile "$dir/ext.cnf"
for level in 3 0; do
  cargo build --release --quiet --config "profile.release.package.rustls.opt-level=$level"
  cp target/release/tls-throughput "$dir/tls-o$level"
done
cd "$dir"
for _ in 1 2 3; do
  for level in 3 0; do echo "rustls opt-level $level: $(./tls-o$level "${1:-300}")"; done
done
