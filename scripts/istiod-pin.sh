#!/usr/bin/env bash
# Moves the istiod harness's pin of istio.io/istio to a commit the Go module proxy serves.
#
#   scripts/istiod-pin.sh SERIES [PSEUDO_VERSION]     e.g. scripts/istiod-pin.sh 1.31
#
# SERIES names a build module, tests/istiod/pilot/SERIES/ (go.mod + go.sum, and main.go where istiod needs
# the fake Kubernetes client). Without PSEUDO_VERSION the candidates are the istio.io/istio versions the
# first proxy of `go env GOPROXY` lists, newest first, plus the current pin; with it, only that one. The first
# candidate that downloads and whose VERSION file says SERIES is taken. (The proxy serves commits, not
# branches: VERSION is what proves the series. A commit of the main branch made before SERIES was branched
# off says SERIES too; check the commit in istio/istio when in doubt.)
#
# Then it rewrites the build module: require istio.io/istio at that version, istio's own `replace`
# directives repeated (a dependency's replaces are not applied), earlier replaces dropped, go.mod/go.sum
# completed and the build checked with -mod=readonly, as the harness builds it. PIN gets the label the
# README's Compatibility table must quote. For the newest series (the one whose PIN says `harness: yes`) the
# harness module tests/istiod/go.mod (Istio's pkg/adsc client) moves to the same commit.
#
# It downloads modules, so it needs the module proxy; nothing is written until a candidate is found.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
series="${1:-}"
want="${2:-}"
if [[ -z "$series" || "$series" == -* ]]; then
  sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
  exit 2
fi
mod="$root/tests/istiod/pilot/$series"
if [[ ! -f "$mod/go.mod" ]]; then
  echo "istiod-pin: no build module at $mod (create go.mod there first: module istiodbuild)" >&2
  exit 2
fi
export GOWORK=off GOFLAGS=-buildvcs=false
current="$(cd "$mod" && go mod edit -json | python3 -c 'import json,sys
for r in json.load(sys.stdin).get("Require") or []:
    if r["Path"] == "istio.io/istio": print(r["Version"])')"

candidates=()
if [[ -n "$want" ]]; then
  candidates=("$want")
else
  proxy="$(go env GOPROXY | tr ',|' '\n\n' | grep -m1 -E '^https?://' || true)"
  if [[ -n "$proxy" ]]; then
    while read -r v; do candidates+=("$v"); done < <(
      curl -fsS --max-time 30 "$proxy/istio.io/istio/@v/list" | grep -E '^v0\.0\.0-[0-9]{14}-[0-9a-f]{12}$' | sort -r)
  fi
  [[ -n "$current" ]] && candidates+=("$current")
fi
if [[ ${#candidates[@]} -eq 0 ]]; then
  echo "istiod-pin: no candidate versions (the proxy listed none; pass a pseudo-version)" >&2
  exit 1
fi

picked="" dir="" gomod=""
for v in "${candidates[@]}"; do
  if ! out="$(go mod download -json "istio.io/istio@$v" 2>/dev/null)"; then
    err="$(printf '%s' "$out" | python3 -c 'import json,sys
try: print(json.load(sys.stdin).get("Error","").splitlines()[0])
except Exception: print("download failed")')"
    echo "istiod-pin: $v: not served ($err)"
    continue
  fi
  read -r dir gomod < <(printf '%s' "$out" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["Dir"], d["GoMod"])')
  ver="$(tr -d '[:space:]' < "$dir/VERSION" 2>/dev/null || true)"
  if [[ "$ver" != "$series" ]]; then
    echo "istiod-pin: $v: VERSION is '${ver:-missing}', not $series"
    continue
  fi
  picked="$v"
  break
done
if [[ -z "$picked" ]]; then
  echo "istiod-pin: no served istio.io/istio version with VERSION $series among ${#candidates[@]} candidates" >&2
  exit 1
fi
commit="${picked##*-}"
echo "istiod-pin: $series -> istio.io/istio@$picked (commit ${commit:0:7}, VERSION $series)"

# istio's own replace directives, as `go mod edit` arguments.
mapfile -t replaces < <(go mod edit -json "$gomod" | python3 -c 'import json,sys
for r in json.load(sys.stdin).get("Replace") or []:
    old = r["Old"]["Path"] + ("@" + r["Old"]["Version"] if r["Old"].get("Version") else "")
    new = r["New"]["Path"] + ("@" + r["New"]["Version"] if r["New"].get("Version") else "")
    print("-replace=" + old + "=" + new)')

# Rewrites one module's pin: drop earlier replaces, add istio's, require the new commit, complete go.mod/go.sum.
repin() {
  local dir=$1 tidy=$2
  (
    cd "$dir"
    local drops=()
    while read -r p; do [[ -n "$p" ]] && drops+=("-dropreplace=$p"); done < <(go mod edit -json | python3 -c 'import json,sys
for r in json.load(sys.stdin).get("Replace") or []: print(r["Old"]["Path"])')
    # Modules istio requires too are set to istio's versions (the client code is built as istiod builds it).
    local aligns=()
    if [[ "$tidy" == yes ]]; then
      while read -r r; do [[ -n "$r" ]] && aligns+=("-require=$r"); done < <(
        python3 -c 'import json,subprocess,sys
mine = {r["Path"] for r in json.loads(subprocess.check_output(["go","mod","edit","-json"])).get("Require") or []}
for r in json.loads(subprocess.check_output(["go","mod","edit","-json",sys.argv[1]])).get("Require") or []:
    if r["Path"] in mine: print(r["Path"] + "@" + r["Version"])' "$gomod")
    fi
    go mod edit ${drops[@]+"${drops[@]}"} ${replaces[@]+"${replaces[@]}"} ${aligns[@]+"${aligns[@]}"} "-require=istio.io/istio@$picked"
    if [[ "$tidy" == yes ]]; then
      go mod tidy
    else
      # No Go files import istio here (the build names the package), so tidy would drop the requirement.
      go build -mod=mod -o /dev/null istio.io/istio/pilot/cmd/pilot-discovery
    fi
  )
}

if [[ -f "$mod/main.go" ]]; then repin "$mod" yes; else repin "$mod" no; fi
echo "istiod-pin: checking the build as the harness runs it (go build -mod=readonly in $mod)"
if [[ -f "$mod/main.go" ]]; then pkg=.; else pkg=istio.io/istio/pilot/cmd/pilot-discovery; fi
(cd "$mod" && go build -mod=readonly -o /dev/null "$pkg")

harness=no
if [[ -f "$mod/PIN" ]] && grep -q '^harness: yes' "$mod/PIN"; then harness=yes; fi
cat > "$mod/PIN" <<EOF
# Written by scripts/istiod-pin.sh: what the harness builds for this series. Quote 'label' in README.md.
label: release-$series @ ${commit:0:7} (VERSION $series)
module: istio.io/istio@$picked
harness: $harness
EOF
if [[ "$harness" == yes ]]; then
  echo "istiod-pin: moving the harness module (tests/istiod, pkg/adsc) to the same commit"
  repin "$root/tests/istiod" yes
  (cd "$root/tests/istiod" && go vet ./... >/dev/null)
fi
echo "istiod-pin: done. Update README.md's Compatibility table to: release-$series @ ${commit:0:7} (VERSION $series)"
