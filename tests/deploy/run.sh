#!/usr/bin/env bash
# Deployment artefacts test: helm lint + helm template of deploy/helm/cloudmap-mcp, kustomize
# builds of deploy/kubernetes, the istiod snippets, the IAM policy, the Dockerfile and the
# operator docs, checked by tests/deploy/check.py. Prints `N passed, N failed`; exits non-zero
# on any failure.
#
#   bash tests/deploy/run.sh
#
# Tools, installed on first use and reused afterwards:
#   helm    built from source through the Go module proxy into target/tools/bin (HELM_VERSION),
#           unless a helm v3 binary is given as $HELM or found there already;
#   PyYAML  in the virtualenv .venv/ at the repository root.
# kubectl (for `kubectl kustomize`) is used when present; without it the kustomize base is checked
# as written.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

HELM_VERSION="${HELM_VERSION:-v3.22.0}"
TOOLS="$ROOT/target/tools/bin"

fail_setup() {
  echo "setup failed: $*" >&2
  echo "0 passed, 1 failed"
  exit 1
}

# --- helm -----------------------------------------------------------------------------------
helm_ok() { [ -x "$1" ] && "$1" version --short 2>/dev/null | grep -q "^v3\."; }

if [ -n "${HELM:-}" ]; then
  helm_ok "$HELM" || fail_setup "HELM=$HELM is not a helm v3 binary"
elif helm_ok "$TOOLS/helm" && [ "$(cat "$TOOLS/helm.version" 2>/dev/null)" = "$HELM_VERSION" ]; then
  HELM="$TOOLS/helm"
else
  command -v go >/dev/null || fail_setup "go is needed to build helm (or set HELM=/path/to/helm)"
  echo "building helm ${HELM_VERSION} into ${TOOLS} (go install, one time)..."
  mkdir -p "$TOOLS"
  start=$(date +%s)
  if ! GOBIN="$TOOLS" go install "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}" >"$ROOT/target/tools/helm-build.log" 2>&1; then
    tail -20 "$ROOT/target/tools/helm-build.log" >&2
    fail_setup "go install helm.sh/helm/v3/cmd/helm@${HELM_VERSION}"
  fi
  echo "$HELM_VERSION" >"$TOOLS/helm.version"
  echo "built helm in $(( $(date +%s) - start ))s"
  HELM="$TOOLS/helm"
fi
echo "helm: $HELM ($("$HELM" version --short); module ${HELM_VERSION})"

# --- Python with PyYAML ---------------------------------------------------------------------
PY="$ROOT/.venv/bin/python"
if ! { [ -x "$PY" ] && "$PY" -c 'import yaml' 2>/dev/null; }; then
  [ -x "$PY" ] || python3 -m venv "$ROOT/.venv" || fail_setup "python3 -m venv .venv"
  "$ROOT/.venv/bin/pip" install --quiet pyyaml || fail_setup "pip install pyyaml"
fi

# cfn-lint and python-hcl2 validate deploy/cloudformation and deploy/terraform (best effort: the
# checks say "skip" without them).
if ! "$PY" -c 'import hcl2, cfnlint' 2>/dev/null; then
  "$ROOT/.venv/bin/pip" install --quiet cfn-lint python-hcl2 || echo "pip install cfn-lint python-hcl2 failed: those checks are skipped"
fi

# --- kubectl (optional) -----------------------------------------------------------------------
KUBECTL=""
if command -v kubectl >/dev/null && kubectl kustomize --help >/dev/null 2>&1; then
  KUBECTL="$(command -v kubectl)"
fi

exec "$PY" "$ROOT/tests/deploy/check.py" --helm "$HELM" --kubectl "$KUBECTL"
