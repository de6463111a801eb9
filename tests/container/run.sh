#!/usr/bin/env bash
# Container image test: builds the image from the repository's Dockerfile (target `prebuilt`, with
# the debug binary `cargo test` already built) on a base image assembled here without any registry,
# runs it as the chart does (user 65532, read-only root filesystem, no capabilities) on the bundled
# example registry with both ports published on 127.0.0.1, and checks /readyz, an ADS exchange from
# the host (grpcurl), the process's uid and a clean SIGTERM shutdown. Prints one line per check,
# the image size, and `N passed, M failed`; exits non-zero on any failure.
#
#   tests/container/run.sh            (scripts/test-all.sh runs it after cargo test)
#
# Environment:
#   CLOUDMAP_MCP_BIN            binary to put in the image (default target/debug/cloudmap-mcp)
#   GRPCURL                     grpcurl binary (default .venv/bin/grpcurl)
#   CONTAINER_STOP_GRACE        seconds `podman stop` waits before SIGKILL (default 10; the chart's
#                               terminationGracePeriodSeconds is 30)
#   CLOUDMAP_MCP_REQUIRE_TOOLS  1: fail when podman cannot be installed (the suite sets it);
#                               otherwise the test is skipped
#
# Tools: podman and runc, installed from Debian's packages (apt-get, as root) when missing. They run
# with a private containers.conf (CONTAINERS_CONF, the machine's own config is not read or changed):
# runtime runc (crun fails on hybrid cgroup v1/v2 hosts) and `default_ulimits = []` (podman would
# otherwise raise RLIMIT_NOFILE above the hard limit, which runc is refused). Images and containers
# go to podman's default storage under unique names and are removed on exit.
#
# The base image stands in for gcr.io/distroless/cc-debian12:nonroot (no registry is needed): the
# binary's shared libraries (ldd), the CA bundle, /etc/passwd and /etc/group with nonroot (65532),
# /tmp and /home/nonroot, imported with USER 65532 and WORKDIR /home/nonroot as distroless has them.
# A check makes sure the binary links only libraries that distroless/cc ships.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

BIN="${CLOUDMAP_MCP_BIN:-$ROOT/target/debug/cloudmap-mcp}"
GRPCURL="${GRPCURL:-$ROOT/.venv/bin/grpcurl}"
GRACE="${CONTAINER_STOP_GRACE:-10}"
REGISTRY_IN_IMAGE=/usr/share/cloudmap-mcp/examples/registry.yaml
# The ServiceEntry hosts of examples/registry.yaml under the default host template {service}.{namespace}.
EXPECTED_HOSTS=(getmesh-external-service.my-namespace colorapp.howto-k8s-cloudmap.pvt.aws.local front.howto-k8s-cloudmap.pvt.aws.local)

passed=0; failed=0
pass() { passed=$((passed+1)); echo "ok    $1"; }
fail() { failed=$((failed+1)); echo "FAIL  $1${2:+: $2}"; }
check() { local name=$1 detail=$2; shift 2; if "$@"; then pass "$name"; else fail "$name" "$detail"; return 1; fi; }
finish() { echo "$passed passed, $failed failed"; [ "$failed" -eq 0 ]; exit $?; }
setup_failed() { fail "setup" "$*"; finish; }

# --- tools ----------------------------------------------------------------------------------------
missing_pkgs() {
  local p
  command -v podman >/dev/null || p+=" podman"
  command -v runc >/dev/null || p+=" runc"
  command -v curl >/dev/null || p+=" curl"
  [ -s /etc/ssl/certs/ca-certificates.crt ] || p+=" ca-certificates"
  echo ${p:-}
}
cannot_install() {
  if [ "${CLOUDMAP_MCP_REQUIRE_TOOLS:-}" = 1 ]; then
    setup_failed "$* (podman and runc are needed to build and run the image; install them, e.g. apt-get install podman runc)"
  fi
  echo "skipped: $* (install podman and runc to run the container test)"
  exit 0
}
pkgs=$(missing_pkgs)
if [ -n "$pkgs" ]; then
  command -v apt-get >/dev/null || cannot_install "missing: $pkgs and no apt-get to install them"
  [ "$(id -u)" = 0 ] || cannot_install "missing: $pkgs and not root, so apt-get cannot install them"
  echo "installing $pkgs from Debian packages (apt-get, one time)..."
  t0=$SECONDS
  log=$(mktemp)
  # shellcheck disable=SC2086
  if ! { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $pkgs; } >"$log" 2>&1; then
    tail -n 20 "$log"; rm -f "$log"
    cannot_install "apt-get install $pkgs failed"
  fi
  rm -f "$log"
  echo "installed $pkgs in $((SECONDS-t0))s"
fi
[ -x "$BIN" ] || setup_failed "no binary at $BIN (build it with cargo build --locked, or set CLOUDMAP_MCP_BIN)"
[ -x "$GRPCURL" ] || setup_failed "no grpcurl at $GRPCURL (scripts/test-all.sh sets up .venv; or set GRPCURL)"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/cloudmap-mcp-container.XXXXXX")
cat >"$WORK/containers.conf" <<'EOF'
[containers]
default_ulimits = []

[engine]
runtime = "runc"
EOF
export CONTAINERS_CONF="$WORK/containers.conf"
podman() { command podman --runtime runc "$@"; }

TAG="test-$$"
BASE="localhost/cloudmap-mcp-base:$TAG"
IMAGE="localhost/cloudmap-mcp:$TAG"
CT="cloudmap-mcp-test-$$"
STAGE_DIR=".image-test-$$"   # inside the build context (the repository); target/ is in .dockerignore
cleanup() {
  podman rm -f -t 0 "$CT" >/dev/null 2>&1
  podman rmi -f "$IMAGE" "$BASE" >/dev/null 2>&1
  rm -rf "$WORK" "$ROOT/$STAGE_DIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

podman version --format 'podman {{.Client.Version}}, runc: '"$(runc --version | head -n 1)"

# --- base image -----------------------------------------------------------------------------------
# Shared libraries of the binary: "name => /path (addr)" and the loader "/path (addr)".
libs=$(ldd "$BIN" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}')
[ -n "$libs" ] || setup_failed "ldd found no shared libraries in $BIN"
# What distroless/cc-debian12 ships: glibc (libc6), libgcc-s1, libstdc++6, libgomp1, libssl3.
bad=""
for l in $libs; do
  case $(basename "$l") in
    ld-linux*.so.* | libc.so.* | libm.so.* | libdl.so.* | libpthread.so.* | librt.so.* | libutil.so.* | \
    libresolv.so.* | libnss_*.so.* | libanl.so.* | libgcc_s.so.* | libstdc++.so.* | libgomp.so.* | \
    libssl.so.3 | libcrypto.so.3) ;;
    *) bad+=" $(basename "$l")" ;;
  esac
done
check "binary links only libraries distroless/cc provides" "not in distroless/cc:$bad" [ -z "$bad" ]

rootfs="$WORK/rootfs"
mkdir -p "$rootfs/etc/ssl/certs" "$rootfs/tmp" "$rootfs/home/nonroot"
for l in $libs; do
  mkdir -p "$rootfs$(dirname "$l")" && cp -L "$l" "$rootfs$l" || setup_failed "cannot copy $l"
done
cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$rootfs/etc/passwd"
printf 'root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n' >"$rootfs/etc/group"
chmod 1777 "$rootfs/tmp"
chown 65532:65532 "$rootfs/home/nonroot"
t0=$SECONDS
tar --numeric-owner -C "$rootfs" -c . |
  podman import --quiet --change 'USER 65532:65532' --change 'WORKDIR /home/nonroot' - "$BASE" >/dev/null ||
  setup_failed "podman import of the base image failed"

# --- image ----------------------------------------------------------------------------------------
mkdir -p "$ROOT/$STAGE_DIR"
ln -f "$BIN" "$ROOT/$STAGE_DIR/cloudmap-mcp" 2>/dev/null || cp "$BIN" "$ROOT/$STAGE_DIR/cloudmap-mcp" ||
  setup_failed "cannot copy $BIN into the build context"
if ! podman build --quiet --layers=false --target prebuilt \
      --build-arg RUNTIME_BASE="$BASE" --build-arg BINARY="$STAGE_DIR/cloudmap-mcp" \
      -f Dockerfile -t "$IMAGE" . >"$WORK/build.log" 2>&1; then
  cat "$WORK/build.log"
  setup_failed "podman build --target prebuilt of Dockerfile failed"
fi
echo "base image and image built in $((SECONDS-t0))s"
rm -rf "${ROOT:?}/$STAGE_DIR"

cfg=$(podman image inspect --format '{{.Config.User}} {{json .Config.Entrypoint}} {{range $p, $_ := .Config.ExposedPorts}}{{$p}} {{end}}' "$IMAGE")
check "image config: user 65532, entrypoint cloudmap-mcp serve, ports 15010 15014" "$cfg" \
  [ "$cfg" = '65532:65532 ["/usr/local/bin/cloudmap-mcp","serve"] 15010/tcp 15014/tcp ' ]

# --- run ------------------------------------------------------------------------------------------
# As the chart runs it: runAsUser 65532, readOnlyRootFilesystem (no tmpfs either), all capabilities
# dropped, no privilege escalation; host ports chosen by podman, on loopback only.
if ! podman run -d --name "$CT" --user 65532:65532 --read-only --read-only-tmpfs=false \
      --cap-drop ALL --security-opt no-new-privileges \
      -p 127.0.0.1::15010 -p 127.0.0.1::15014 \
      "$IMAGE" --registry-file "$REGISTRY_IN_IMAGE" >/dev/null 2>"$WORK/run.err"; then
  cat "$WORK/run.err"
  setup_failed "podman run failed"
fi
container_log() { podman logs "$CT" 2>&1 | tail -n "${1:-20}"; }
host_port() { podman port "$CT" "$1/tcp" 2>/dev/null | head -n 1; }
GRPC=$(host_port 15010); ADMIN=$(host_port 15014)
case "$GRPC $ADMIN" in
  127.0.0.1:*" "127.0.0.1:*) echo "container $CT: gRPC on $GRPC, admin on $ADMIN" ;;
  *)
    container_log
    setup_failed "no ports published on 127.0.0.1 ('$GRPC' '$ADMIN'); container state: $(podman inspect --format '{{.State.Status}}, exit code {{.State.ExitCode}}' "$CT" 2>&1)" ;;
esac

ready="" code=""
for _ in $(seq 1 100); do
  code=$(curl -s -o "$WORK/readyz" -w '%{http_code}' "http://$ADMIN/readyz") && [ "$code" = 200 ] && { ready=$(cat "$WORK/readyz"); break; }
  [ "$(podman inspect --format '{{.State.Running}}' "$CT")" = true ] || break
  sleep 0.2
done
check "/readyz answers 200 with the example's 3 ServiceEntries" "HTTP ${code:-none}: $(cat "$WORK/readyz" 2>/dev/null)" \
  [ "$ready" = "ready: 3 ServiceEntries" ] || container_log

health=$("$GRPCURL" -plaintext "$GRPC" grpc.health.v1.Health/Check 2>&1)
check "gRPC health: SERVING" "$health" grep -q '"status": "SERVING"' <<<"$health"

# One DiscoveryRequest for the ServiceEntry type, as istiod sends it; grpcurl closes its side after
# the response. The response must be the whole example, decoded through the server's reflection.
ads=$(printf '%s' '{"node":{"id":"container-test"},"typeUrl":"networking.istio.io/v1/ServiceEntry"}' |
  "$GRPCURL" -plaintext -max-msg-sz 2147483647 -d @ "$GRPC" \
    envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources 2>&1)
printf '%s' "$ads" >"$WORK/ads.json"
ads_check=$(python3 - "$WORK/ads.json" "${EXPECTED_HOSTS[@]}" 2>&1 <<'PY'
import json, sys
want = sys.argv[2:]
try:
    r = json.load(open(sys.argv[1]))
except ValueError as e:
    sys.exit(f"not one JSON DiscoveryResponse: {e}")
hosts = [h for res in r.get("resources", []) for h in res.get("body", {}).get("hosts", [])]
errs = []
if r.get("typeUrl") != "networking.istio.io/v1/ServiceEntry":
    errs.append(f"typeUrl {r.get('typeUrl')}")
if not r.get("versionInfo") or not r.get("nonce"):
    errs.append("no versionInfo/nonce")
if sorted(hosts) != sorted(want):
    errs.append(f"hosts {sorted(hosts)}, want {sorted(want)}")
print("; ".join(errs) or f"version {r['versionInfo']}, hosts {' '.join(sorted(hosts))}")
sys.exit(1 if errs else 0)
PY
)
ads_ok=$?
[ $ads_ok -eq 0 ] && echo "  ADS: $ads_check"
check "ADS from the host: ServiceEntry response with the example's hosts" "$ads_check
$ads" [ $ads_ok -eq 0 ]

pid=$(podman inspect --format '{{.State.Pid}}' "$CT")
ids=$(awk '/^Uid:|^Gid:/ {printf "%s %s %s %s %s ", $1, $2, $3, $4, $5}' "/proc/$pid/status" 2>/dev/null)
check "process runs as uid/gid 65532 (real, effective, saved, fs)" "$ids" \
  [ "$ids" = "Uid: 65532 65532 65532 65532 Gid: 65532 65532 65532 65532 " ]
top=$(podman top "$CT" user group args 2>&1 | tail -n +2)
echo "  podman top: $top"

# SIGTERM (podman stop sends the image's stop signal, SIGTERM, then SIGKILL after the grace period).
t0=$(date +%s.%N)
podman stop -t "$GRACE" "$CT" >/dev/null 2>&1
took=$(echo "$t0 $(date +%s.%N)" | awk '{printf "%.1f", $2 - $1}')
exit_code=$(podman inspect --format '{{.State.ExitCode}}' "$CT")
check "SIGTERM: exits 0 within the ${GRACE}s grace period (took ${took}s)" "exit code $exit_code after ${took}s" \
  awk -v c="$exit_code" -v t="$took" -v g="$GRACE" 'BEGIN { exit !(c == 0 && t < g) }'
logs=$(podman logs "$CT" 2>&1)
check "log: SIGTERM received ... shutdown complete" "$(tail -n 5 <<<"$logs")" \
  grep -Pzq '(?s)SIGTERM received.*shutting down.*shutdown complete' <<<"$logs"

size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
base_size=$(podman image inspect --format '{{.Size}}' "$BASE")
bin_size=$(stat -c %s "$BIN")
echo "image size: $((size/1000000)) MB ($size bytes): base $((base_size/1000000)) MB + binary $((bin_size/1000000)) MB ($BIN) + example registry"
finish
