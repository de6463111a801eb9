#!/usr/bin/env python3
"""Checks of everything under deploy/ (and the Dockerfile, docs/operations.md).

Run through tests/deploy/run.sh, which provides helm and a Python with PyYAML:

    python tests/deploy/check.py --helm target/tools/bin/helm [--kubectl kubectl]

Renders the Helm chart (helm lint + helm template) with its defaults and with the values files
beside this script, builds the kustomize base and overlays (kubectl kustomize when available, else
the base files are parsed as they are), and checks the invariants that make the manifests work:
ports match the listen-address env vars, probes hit /readyz and /healthz on the admin port,
hardened securityContext, every env var is a real server flag (and every flag is exposed by the
chart), selectors match, the istiod snippets list both xds:// and k8s://, the IAM policy is the
read-only set, the metrics table documents every metric. Prints `N passed, N failed`.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "cloudmap-mcp"
KUSTOMIZE = ROOT / "deploy" / "kubernetes"
ISTIO = ROOT / "deploy" / "istio"
HERE = Path(__file__).resolve().parent
BINARY = ROOT / "target" / "debug" / "cloudmap-mcp"

# Env vars the manifests may set besides the CLOUDMAP_MCP_* flags.
EXTRA_ENV = {"POD_NAMESPACE", "POD_NAME", "RUST_LOG"}
AWS_ENV = re.compile(r"^AWS_[A-Z0-9_]+$")

READ_ONLY_ACTIONS = {
    "servicediscovery:ListNamespaces",
    "servicediscovery:ListServices",
    "servicediscovery:GetService",
    "servicediscovery:DiscoverInstances",
    "servicediscovery:DiscoverInstancesRevision",
    "servicediscovery:GetServiceAttributes",
}


class Results:
    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        if ok:
            self.passed += 1
            print(f"ok   {name}")
        else:
            self.failed += 1
            print(f"FAIL {name}" + (f": {detail}" if detail else ""))
        return ok

    def run(self, name: str, fn, *args):
        """Run a group of checks; an exception counts as one failure."""
        try:
            return fn(*args)
        except Exception as e:  # noqa: BLE001 - report and go on
            self.failed += 1
            print(f"FAIL {name}: {type(e).__name__}: {e}")
            traceback.print_exc(limit=3)
            return None


R = Results()


# ---------------------------------------------------------------------------------------------
# Known server flags
# ---------------------------------------------------------------------------------------------

def src_files() -> list[Path]:
    return sorted((ROOT / "src").rglob("*.rs"))


def known_flags() -> tuple[set[str], str]:
    """CLOUDMAP_MCP_* env names of `serve`: from the binary's help when it is newer than every
    source file, else from the `env = "..."` attributes in src/."""
    srcs = src_files()
    newest_src = max((p.stat().st_mtime for p in srcs), default=0)
    if BINARY.exists() and BINARY.stat().st_mtime >= newest_src:
        out = subprocess.run([str(BINARY), "serve", "--help"], capture_output=True, text=True, timeout=30)
        names = set(re.findall(r"\[env: (CLOUDMAP_MCP_[A-Z0-9_]+)=", out.stdout))
        if names:
            return names, f"{BINARY.relative_to(ROOT)} serve --help"
    names: set[str] = set()
    for p in srcs:
        names |= set(re.findall(r'env\s*=\s*"(CLOUDMAP_MCP_[A-Z0-9_]+)"', p.read_text()))
    return names, "src/**/*.rs (binary missing or older than the sources)"


def default_ports() -> tuple[int, int]:
    text = (ROOT / "src" / "config.rs").read_text()
    grpc = re.search(r'CLOUDMAP_MCP_GRPC_ADDR".*?default_value = "[^"]*:(\d+)"', text, re.S)
    admin = re.search(r'CLOUDMAP_MCP_ADMIN_ADDR".*?default_value = "[^"]*:(\d+)"', text, re.S)
    return int(grpc.group(1)), int(admin.group(1))


# ---------------------------------------------------------------------------------------------
# Helpers on manifests
# ---------------------------------------------------------------------------------------------

def load_docs(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d.get("kind") == kind]


def one(docs: list[dict], kind: str) -> dict:
    found = by_kind(docs, kind)
    if len(found) != 1:
        raise AssertionError(f"expected one {kind}, found {len(found)}")
    return found[0]


def port_of_addr(addr: str) -> int:
    return int(addr.rsplit(":", 1)[1])


def env_map(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def resolve_port(container: dict, port) -> int | None:
    if isinstance(port, int):
        return port
    for p in container.get("ports", []):
        if p.get("name") == port:
            return p["containerPort"]
    return None


def labels_match(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in (selector or {}).items())


def check_workload(label: str, docs: list[dict], known: set[str], *, replicas: int | None = 2,
                   expect_mode: str | None = None) -> dict:
    """Invariants shared by the Helm renders and the kustomize builds."""
    dep = one(docs, "Deployment")
    pod = dep["spec"]["template"]
    spec = pod["spec"]
    pod_labels = pod["metadata"]["labels"]
    containers = spec["containers"]
    R.check(f"{label}: one container", len(containers) == 1, f"{len(containers)}")
    c = containers[0]
    env = env_map(c)

    if replicas is not None:
        R.check(f"{label}: {replicas} replicas", dep["spec"].get("replicas") == replicas, str(dep["spec"].get("replicas")))
    R.check(f"{label}: selector matches pod labels", labels_match(dep["spec"]["selector"]["matchLabels"], pod_labels))
    R.check(f"{label}: no sidecar injection", pod_labels.get("sidecar.istio.io/inject") == "false",
            str(pod_labels.get("sidecar.istio.io/inject")))

    # env: known flags only, no duplicates, POD_NAMESPACE from the downward API
    names = [e["name"] for e in c.get("env", [])]
    R.check(f"{label}: env names unique", len(names) == len(set(names)), str(names))
    unknown = [n for n in names if not (n in known or n in EXTRA_ENV or AWS_ENV.match(n))]
    R.check(f"{label}: every env var is a server flag", not unknown, f"unknown: {unknown}")
    pns = env.get("POD_NAMESPACE", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
    R.check(f"{label}: POD_NAMESPACE from the downward API", pns == "metadata.namespace", str(pns))
    for n, e in env.items():
        v = e.get("value")
        if v is not None and re.fullmatch(r"[0-9.]+e\+[0-9]+", str(v)):
            R.check(f"{label}: {n} is not in exponent notation", False, v)

    # ports: container ports = the listen addresses
    grpc_addr = env.get("CLOUDMAP_MCP_GRPC_ADDR", {}).get("value")
    admin_addr = env.get("CLOUDMAP_MCP_ADMIN_ADDR", {}).get("value")
    R.check(f"{label}: GRPC_ADDR set", bool(grpc_addr))
    R.check(f"{label}: ADMIN_ADDR set", bool(admin_addr))
    grpc_port = port_of_addr(grpc_addr)
    admin_port = port_of_addr(admin_addr)
    R.check(f"{label}: container port grpc = GRPC_ADDR port", resolve_port(c, "grpc") == grpc_port,
            f"{resolve_port(c, 'grpc')} vs {grpc_port}")
    R.check(f"{label}: container port http-admin = ADMIN_ADDR port", resolve_port(c, "http-admin") == admin_port,
            f"{resolve_port(c, 'http-admin')} vs {admin_port}")

    # probes
    rp = c.get("readinessProbe", {}).get("httpGet", {})
    lp = c.get("livenessProbe", {}).get("httpGet", {})
    R.check(f"{label}: readiness probe GET /readyz", rp.get("path") == "/readyz", str(rp))
    R.check(f"{label}: readiness probe on the admin port", resolve_port(c, rp.get("port")) == admin_port, str(rp))
    R.check(f"{label}: liveness probe GET /healthz", lp.get("path") == "/healthz", str(lp))
    R.check(f"{label}: liveness probe on the admin port", resolve_port(c, lp.get("port")) == admin_port, str(lp))

    # resources
    res = c.get("resources", {})
    R.check(f"{label}: resource requests and memory limit", bool(res.get("requests")) and "memory" in res.get("limits", {}), str(res))

    # securityContext
    psc = spec.get("securityContext", {})
    csc = c.get("securityContext", {})
    R.check(f"{label}: pod runAsNonRoot", psc.get("runAsNonRoot") is True, str(psc))
    R.check(f"{label}: pod seccomp RuntimeDefault", psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", str(psc))
    R.check(f"{label}: container runAsNonRoot", csc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, str(csc))
    uid = csc.get("runAsUser", psc.get("runAsUser"))
    R.check(f"{label}: non-root uid", isinstance(uid, int) and uid != 0, str(uid))
    R.check(f"{label}: readOnlyRootFilesystem", csc.get("readOnlyRootFilesystem") is True, str(csc))
    R.check(f"{label}: no privilege escalation", csc.get("allowPrivilegeEscalation") is False, str(csc))
    R.check(f"{label}: capabilities drop ALL", "ALL" in csc.get("capabilities", {}).get("drop", []), str(csc))
    R.check(f"{label}: container seccomp RuntimeDefault",
            csc.get("seccompProfile", psc.get("seccompProfile", {})).get("type") == "RuntimeDefault", str(csc))

    # topology spread
    tsc = spec.get("topologySpreadConstraints", [])
    R.check(f"{label}: topology spread constraints", len(tsc) >= 1, str(tsc))
    R.check(f"{label}: topology spread selects own pods",
            all(labels_match(t.get("labelSelector", {}).get("matchLabels"), pod_labels) for t in tsc))

    # Service
    svc = one(docs, "Service")
    R.check(f"{label}: Service selects the pods", labels_match(svc["spec"]["selector"], pod_labels))
    sports = {p["name"]: p for p in svc["spec"]["ports"]}
    g = sports.get("grpc", {})
    a = sports.get("http-admin", {})
    R.check(f"{label}: Service grpc port targets the gRPC container port", resolve_port(c, g.get("targetPort")) == grpc_port, str(g))
    R.check(f"{label}: Service grpc appProtocol grpc", g.get("appProtocol") == "grpc", str(g))
    R.check(f"{label}: Service admin port targets the admin container port", resolve_port(c, a.get("targetPort")) == admin_port, str(a))

    # ServiceAccount
    sa_name = spec.get("serviceAccountName")
    sas = [d for d in by_kind(docs, "ServiceAccount") if d["metadata"]["name"] == sa_name]
    R.check(f"{label}: pod uses the rendered ServiceAccount", len(sas) == 1, str(sa_name))

    # PodDisruptionBudget
    pdb = one(docs, "PodDisruptionBudget")
    R.check(f"{label}: PDB selects the pods", labels_match(pdb["spec"]["selector"]["matchLabels"], pod_labels))
    R.check(f"{label}: PDB keeps a replica", pdb["spec"].get("minAvailable", 0) >= 1 or "maxUnavailable" in pdb["spec"])

    # Volumes: every mount has a volume; files named by env vars live on a mount.
    vols = {v["name"]: v for v in spec.get("volumes", []) or []}
    mounts = c.get("volumeMounts", []) or []
    R.check(f"{label}: every volumeMount has a volume", all(m["name"] in vols for m in mounts), str(mounts))
    R.check(f"{label}: no subPath mounts (rotation-safe)", all("subPath" not in m for m in mounts), str(mounts))

    def mount_for(path: str):
        for m in mounts:
            if path.startswith(m["mountPath"].rstrip("/") + "/"):
                return m, vols.get(m["name"])
        return None, None

    for n in ("CLOUDMAP_MCP_REGISTRY_FILE", "CLOUDMAP_MCP_SOURCES_FILE", "CLOUDMAP_MCP_TLS_CERT_FILE", "CLOUDMAP_MCP_TLS_KEY_FILE", "CLOUDMAP_MCP_TLS_CLIENT_CA_FILE"):
        if n in env:
            m, v = mount_for(env[n]["value"])
            R.check(f"{label}: {n} is on a mounted volume", m is not None and v is not None, env[n]["value"])
            if v is not None:
                want = "configMap" if n in ("CLOUDMAP_MCP_REGISTRY_FILE", "CLOUDMAP_MCP_SOURCES_FILE") else "secret"
                R.check(f"{label}: {n} volume is a {want}", want in v, str(v))
    R.check(f"{label}: TLS cert and key set together",
            ("CLOUDMAP_MCP_TLS_CERT_FILE" in env) == ("CLOUDMAP_MCP_TLS_KEY_FILE" in env))

    if expect_mode == "cloudmap":
        R.check(f"{label}: Cloud Map mode", env.get("CLOUDMAP_MCP_CLOUDMAP", {}).get("value") == "true"
                and "CLOUDMAP_MCP_REGISTRY_FILE" not in env, str(sorted(env)))
    elif expect_mode == "registryFile":
        R.check(f"{label}: registry-file mode", "CLOUDMAP_MCP_REGISTRY_FILE" in env and "CLOUDMAP_MCP_CLOUDMAP" not in env,
                str(sorted(env)))

    # NetworkPolicy (when present): gRPC only from istiod, admin port open
    for np in by_kind(docs, "NetworkPolicy"):
        R.check(f"{label}: NetworkPolicy selects the pods", labels_match(np["spec"]["podSelector"]["matchLabels"], pod_labels))
        rules = np["spec"].get("ingress", [])
        grpc_rules = [r for r in rules if any(resolve_port(c, p.get("port")) == grpc_port for p in r.get("ports", []))]
        admin_rules = [r for r in rules if any(resolve_port(c, p.get("port")) == admin_port for p in r.get("ports", []))]
        R.check(f"{label}: NetworkPolicy has a gRPC rule", len(grpc_rules) == 1, str(rules))
        if grpc_rules:
            peers = grpc_rules[0].get("from", [])
            istiod = [p for p in peers if p.get("podSelector", {}).get("matchLabels", {}).get("app") == "istiod"
                      and "namespaceSelector" in p]
            R.check(f"{label}: gRPC allowed from istiod pods in their namespace", len(istiod) >= 1, str(peers))
            R.check(f"{label}: gRPC not open to everyone", len(peers) >= 1 and all(p for p in peers), str(peers))
        R.check(f"{label}: NetworkPolicy keeps the admin/metrics port reachable", len(admin_rules) >= 1, str(rules))
    return {"dep": dep, "container": c, "env": env, "svc": svc, "grpc_port": grpc_port, "admin_port": admin_port}


# ---------------------------------------------------------------------------------------------
# Helm
# ---------------------------------------------------------------------------------------------

# helm built with `go install` lacks the release ldflags and assumes Kubernetes v1.20 by default.
KUBE_VERSION = os.environ.get("KUBE_VERSION", "1.31.0")


def helm(helm_bin: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([helm_bin, *args], capture_output=True, text=True, timeout=120)


def helm_template(helm_bin: str, *values: str, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    args = ["template", "cloudmap-mcp", str(CHART), "--namespace", "istio-system", "--kube-version", KUBE_VERSION]
    for v in values:
        args += ["-f", v]
    return helm(helm_bin, *args, *extra)


def check_helm(helm_bin: str, known: set[str]) -> None:
    full = str(HERE / "values-full.yaml")
    registry = str(HERE / "values-registry.yaml")
    sources = str(HERE / "values-sources.yaml")

    for name, vals in (("defaults", ()), ("values-full", (full,)), ("values-registry", (registry,)),
                       ("values-sources", (sources,))):
        args = ["lint", str(CHART), "--strict", "--namespace", "istio-system", "--kube-version", KUBE_VERSION]
        for v in vals:
            args += ["-f", v]
        p = helm(helm_bin, *args)
        R.check(f"helm lint --strict ({name})", p.returncode == 0, (p.stdout + p.stderr)[-2000:])

    renders = {}
    for name, vals in (("defaults", ()), ("values-full", (full,)), ("values-registry", (registry,)),
                       ("values-sources", (sources,))):
        p = helm_template(helm_bin, *vals)
        if not R.check(f"helm template ({name})", p.returncode == 0, p.stderr[-2000:]):
            continue
        docs = load_docs(p.stdout)
        R.check(f"helm template ({name}) parses, every object named",
                all(d.get("apiVersion") and d.get("kind") and d.get("metadata", {}).get("name") for d in docs))
        R.check(f"helm template ({name}) objects in the release namespace",
                all(d["metadata"].get("namespace") == "istio-system" for d in docs),
                str([(d["kind"], d["metadata"].get("namespace")) for d in docs]))
        renders[name] = docs

    if "values-sources" in renders:
        docs = renders["values-sources"]
        w = check_workload("chart values-sources", docs, known, expect_mode="cloudmap")
        env = {n: e.get("value") for n, e in w["env"].items()}
        R.check("values-sources: the sources file is given",
                env.get("CLOUDMAP_MCP_SOURCES_FILE") == "/etc/cloudmap-mcp/sources/sources.yaml", str(sorted(env)))
        single = [n for n in ("CLOUDMAP_MCP_AWS_REGION", "CLOUDMAP_MCP_INCLUDE_NAMESPACES", "CLOUDMAP_MCP_EXCLUDE_NAMESPACES",
                              "CLOUDMAP_MCP_INCLUDE_SERVICES", "CLOUDMAP_MCP_EXCLUDE_SERVICES", "CLOUDMAP_MCP_NAMESPACE_TYPES")
                  if n in env]
        R.check("values-sources: no single-source flags next to the sources file (the server refuses them)", not single,
                str(single))
        R.check("values-sources: shared flags still set", env.get("CLOUDMAP_MCP_AWS_API_RATE") == "50"
                and env.get("CLOUDMAP_MCP_FIRST_SYNC_TIMEOUT") == "2m", str(sorted(env)))
        cms = by_kind(docs, "ConfigMap")
        text = cms[0]["data"].get("sources.yaml", "") if len(cms) == 1 else ""
        parsed = yaml.safe_load(text) if text else None
        R.check("values-sources: the sources ConfigMap holds the file",
                bool(parsed) and [x["name"] for x in parsed["sources"]] == ["platform-use1", "payments-use1", "shared-from-network"],
                str([d["metadata"]["name"] for d in cms]))
        annotations = w["dep"]["spec"]["template"]["metadata"].get("annotations", {})
        R.check("values-sources: a changed file rolls the pods", "cloudmap-mcp.io/sources-checksum" in annotations,
                str(annotations))

    if "defaults" in renders:
        docs = renders["defaults"]
        w = check_workload("chart defaults", docs, known, expect_mode="cloudmap")
        R.check("chart defaults: Service is cloudmap-mcp (address in deploy/istio)", w["svc"]["metadata"]["name"] == "cloudmap-mcp")
        gp, ap = default_ports()
        R.check("chart defaults: ports are the server defaults", (w["grpc_port"], w["admin_port"]) == (gp, ap),
                f"{(w['grpc_port'], w['admin_port'])} vs {(gp, ap)}")
        sport = {p["name"]: p["port"] for p in w["svc"]["spec"]["ports"]}
        R.check("chart defaults: Service ports 15010/15014", sport == {"grpc": gp, "http-admin": ap}, str(sport))
        R.check("chart defaults: no optional objects",
                not by_kind(docs, "NetworkPolicy") and not by_kind(docs, "ServiceMonitor") and not by_kind(docs, "Certificate")
                and not by_kind(docs, "ConfigMap"), str([d["kind"] for d in docs]))
        R.check("chart defaults: no TLS env", not any(n.startswith("CLOUDMAP_MCP_TLS_") for n in w["env"]))
        R.check("chart defaults: unset flags are left to the server",
                "CLOUDMAP_MCP_SEND_TIMEOUT" not in w["env"] and "CLOUDMAP_MCP_HEALTH_FILTER" not in w["env"])

    if "values-full" in renders:
        docs = renders["values-full"]
        w = check_workload("chart values-full", docs, known, expect_mode="cloudmap")
        env = {k: v.get("value") for k, v in w["env"].items()}
        R.check("values-full: gRPC on 16010, admin on 16014", (w["grpc_port"], w["admin_port"]) == (16010, 16014))
        R.check("values-full: integers rendered as integers", env.get("CLOUDMAP_MCP_MAX_REQUEST_BYTES") == "8388608"
                and env.get("CLOUDMAP_MCP_AWS_API_RATE") == "20", str(env.get("CLOUDMAP_MCP_MAX_REQUEST_BYTES")))
        R.check("values-full: fractions kept", env.get("CLOUDMAP_MCP_MAX_REMOVAL_RATIO") == "0.3", str(env.get("CLOUDMAP_MCP_MAX_REMOVAL_RATIO")))
        R.check("values-full: labels map rendered KEY=VALUE,...", env.get("CLOUDMAP_MCP_LABELS") == "source=cloudmap,team=platform",
                str(env.get("CLOUDMAP_MCP_LABELS")))
        R.check("values-full: lists joined with commas", env.get("CLOUDMAP_MCP_EXPORT_TO") == ".,istio-system",
                str(env.get("CLOUDMAP_MCP_EXPORT_TO")))
        R.check("values-full: listener limits, pacing and debug views", env.get("CLOUDMAP_MCP_MAX_CONNECTIONS") == "500"
                and env.get("CLOUDMAP_MCP_MAX_ADS_STREAMS") == "200" and env.get("CLOUDMAP_MCP_MIN_PUSH_INTERVAL") == "2s"
                and env.get("CLOUDMAP_MCP_DEBUG_ADDR") == "127.0.0.1:15015" and env.get("CLOUDMAP_MCP_DEBUG_VIEWS") == "false",
                str({k: v for k, v in env.items() if "CONNECTIONS" in k or "DEBUG" in k or "PUSH" in k or "ADS" in k}))
        R.check("values-full: log format", env.get("CLOUDMAP_MCP_LOG_FORMAT") == "text" and env.get("RUST_LOG") == "info,cloudmap_mcp=debug")
        R.check("values-full: TLS files set", all(f"CLOUDMAP_MCP_TLS_{k}_FILE" in env for k in ("CERT", "KEY", "CLIENT_CA")), str(sorted(env)))
        R.check("values-full: TLS client auth and reload interval", env.get("CLOUDMAP_MCP_TLS_CLIENT_AUTH") == "optional"
                and env.get("CLOUDMAP_MCP_TLS_RELOAD_INTERVAL") == "30s")
        sa = one(docs, "ServiceAccount")
        R.check("values-full: IRSA annotation", sa["metadata"].get("annotations", {}).get("eks.amazonaws.com/role-arn")
                == "arn:aws:iam::111122223333:role/cloudmap-mcp")
        sm = by_kind(docs, "ServiceMonitor")
        R.check("values-full: ServiceMonitor rendered", len(sm) == 1)
        if sm:
            ep = sm[0]["spec"]["endpoints"][0]
            svc_ports = {p["name"]: p for p in w["svc"]["spec"]["ports"]}
            R.check("values-full: ServiceMonitor scrapes /metrics on the admin Service port",
                    ep.get("path") == "/metrics" and ep.get("port") in svc_ports
                    and resolve_port(w["container"], svc_ports[ep["port"]]["targetPort"]) == w["admin_port"], str(ep))
            R.check("values-full: ServiceMonitor selects the Service",
                    labels_match(sm[0]["spec"]["selector"]["matchLabels"], w["svc"]["metadata"]["labels"]))
            R.check("values-full: ServiceMonitor labels", sm[0]["metadata"]["labels"].get("release") == "kube-prometheus-stack")
        R.check("values-full: NetworkPolicy rendered", len(by_kind(docs, "NetworkPolicy")) == 1)
        certs = by_kind(docs, "Certificate")
        R.check("values-full: cert-manager Certificate rendered", len(certs) == 1)
        if certs:
            cert = certs[0]["spec"]
            vols = {v["name"]: v for v in w["dep"]["spec"]["template"]["spec"]["volumes"]}
            R.check("values-full: Certificate writes the mounted Secret", vols["tls"]["secret"]["secretName"] == cert["secretName"])
            R.check("values-full: Certificate valid for the Service DNS name",
                    "cloudmap-mcp.istio-system.svc" in cert["dnsNames"] and "cloudmap-mcp.example.internal" in cert["dnsNames"])
            R.check("values-full: client CA from its own Secret", vols["client-ca"]["secret"]["secretName"] == "cloudmap-mcp-client-ca")
            renders["cert_dns_names"] = cert["dnsNames"]

    if "values-registry" in renders:
        docs = renders["values-registry"]
        w = check_workload("chart values-registry", docs, known, expect_mode="registryFile")
        cm = one(docs, "ConfigMap")
        path = w["env"]["CLOUDMAP_MCP_REGISTRY_FILE"]["value"]
        key = os.path.basename(path)
        vols = {v["name"]: v for v in w["dep"]["spec"]["template"]["spec"]["volumes"]}
        R.check("values-registry: mounted ConfigMap is the rendered one", vols["registry"]["configMap"]["name"] == cm["metadata"]["name"])
        R.check("values-registry: ConfigMap holds the file the env var names", key in cm["data"], f"{key} not in {list(cm['data'])}")
        renv = {k: v.get("value") for k, v in w["env"].items()}
        R.check("values-registry: registry caps rendered", renv.get("CLOUDMAP_MCP_REGISTRY_MAX_BYTES") == "1048576"
                and renv.get("CLOUDMAP_MCP_REGISTRY_MAX_INSTANCES") == "1000" and "CLOUDMAP_MCP_REGISTRY_MAX_SERVICES" not in renv,
                str({k: v for k, v in renv.items() if "REGISTRY" in k}))
        content = cm["data"].get(key, "")
        reg = yaml.safe_load(content)
        R.check("values-registry: registry parses with namespaces", isinstance(reg, dict) and reg.get("namespaces"))
        check_registry_with_binary("values-registry ConfigMap", content)
        R.check("values-registry: poll interval flag", w["env"].get("CLOUDMAP_MCP_REGISTRY_POLL_INTERVAL", {}).get("value") == "5s")

    # Values the chart must refuse.
    for name, sets in (
        ("unknown source", ["--set", "source=consul"]),
        ("registryFile without content", ["--set", "source=registryFile"]),
        ("cert-manager without issuer", ["--set", "tls.enabled=true", "--set", "tls.certManager.enabled=true"]),
        ("client CA without TLS", ["--set", "tls.clientCA.enabled=true"]),
        ("unknown log format", ["--set", "config.logFormat=xml"]),
        ("unknown health filter (schema)", ["--set", "config.healthFilter=HEALTHY_ONLY"]),
        ("unknown namespace type (schema)", ["--set", "cloudmap.namespaceTypes={DNS}"]),
        ("malformed IRSA role ARN (schema)", ["--set", "serviceAccount.irsaRoleArn=my-role"]),
        ("port out of range (schema)", ["--set", "config.grpcPort=70000"]),
        ("no shards (schema)", ["--set", "config.shards=0"]),
        ("shard ports past 65535", ["--set", "config.grpcPort=65534", "--set", "config.shards=4"]),
        ("bad duration (schema)", ["--set", "config.sendTimeout=soon"]),
        ("unknown client auth (schema)", ["--set", "tls.enabled=true", "--set", "tls.clientCA.enabled=true",
                                          "--set", "tls.clientCA.auth=maybe"]),
    ):
        p = helm_template(helm_bin, extra=tuple(sets))
        R.check(f"helm template refuses: {name}", p.returncode != 0, "rendered without error")

    # The generic `flags` map and --set of numbers.
    p = helm_template(helm_bin, extra=("--set", "flags.some-future-flag=abc", "--set", "config.maxResourceNames=20000",
                                       "--set", "replicaCount=3"))
    if R.check("helm template with flags map", p.returncode == 0, p.stderr[-1000:]):
        docs = load_docs(p.stdout)
        env = {e["name"]: e.get("value") for e in one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]}
        R.check("flags map rendered as CLOUDMAP_MCP_<FLAG>", env.get("CLOUDMAP_MCP_SOME_FUTURE_FLAG") == "abc", str(sorted(env)))
        R.check("--set integers rendered as integers", env.get("CLOUDMAP_MCP_MAX_RESOURCE_NAMES") == "20000")

    # --shards: one container port, Service port and NetworkPolicy port per shard.
    p = helm_template(helm_bin, extra=("--set", "config.shards=4", "--set", "networkPolicy.enabled=true"))
    if R.check("helm template with config.shards=4", p.returncode == 0, p.stderr[-1000:]):
        docs = load_docs(p.stdout)
        c = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e.get("value") for e in c["env"]}
        R.check("shards: CLOUDMAP_MCP_SHARDS=4", env.get("CLOUDMAP_MCP_SHARDS") == "4", str(env.get("CLOUDMAP_MCP_SHARDS")))
        want = {"grpc": 15010, "grpc-1": 15011, "grpc-2": 15012, "grpc-3": 15013}
        cports = {x["name"]: x["containerPort"] for x in c["ports"] if x["name"].startswith("grpc")}
        R.check("shards: container ports grpc, grpc-1..3 on consecutive ports", cports == want, str(cports))
        sports = {x["name"]: (x["port"], x["targetPort"], x.get("appProtocol")) for x in one(docs, "Service")["spec"]["ports"]}
        R.check("shards: a Service port per shard, targeting its container port",
                all(sports.get(n) == (port, n, "grpc") for n, port in want.items()), str(sports))
        np_ports = [x["port"] for r in one(docs, "NetworkPolicy")["spec"]["ingress"] for x in r.get("ports", [])]
        R.check("shards: the NetworkPolicy opens every shard port to istiod", all(n in np_ports for n in want), str(np_ports))
    p = helm_template(helm_bin)
    if p.returncode == 0:
        env = {e["name"] for e in one(load_docs(p.stdout), "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]}
        R.check("shards: unset by default (one shard)", "CLOUDMAP_MCP_SHARDS" not in env)

    # App Mesh files: a ConfigMap mounted as a directory that --appmesh-file reads, and the server
    # translates what the chart mounts.
    colorapp = ROOT / "src" / "appmesh" / "testdata" / "colorapp" / "k8s.yaml"
    p = helm_template(helm_bin, extra=("--set-file", f"appMesh.files.colorapp\\.yaml={colorapp}"))
    if R.check("helm template with appMesh.files", p.returncode == 0, p.stderr[-1000:]):
        docs = load_docs(p.stdout)
        cms = [d for d in docs if d.get("kind") == "ConfigMap" and d["metadata"]["name"].endswith("-appmesh")]
        R.check("appMesh: a ConfigMap holds the file", len(cms) == 1 and cms[0]["data"].get("colorapp.yaml", "").strip() == colorapp.read_text().strip(),
                str([c["metadata"]["name"] for c in cms]))
        pod = one(docs, "Deployment")["spec"]["template"]["spec"]
        c = pod["containers"][0]
        env = {e["name"]: e.get("value") for e in c["env"]}
        mount = next((m for m in c.get("volumeMounts", []) if m["name"] == "appmesh"), {})
        vol = next((v for v in pod.get("volumes", []) if v["name"] == "appmesh"), {})
        R.check("appMesh: CLOUDMAP_MCP_APPMESH_FILES is the mounted directory",
                env.get("CLOUDMAP_MCP_APPMESH_FILES") == mount.get("mountPath") == "/etc/cloudmap-mcp/appmesh", f"{env.get('CLOUDMAP_MCP_APPMESH_FILES')} {mount}")
        R.check("appMesh: the volume is the rendered ConfigMap", cms and vol.get("configMap", {}).get("name") == cms[0]["metadata"]["name"], str(vol))
        if BINARY.exists() and cms:
            with tempfile.TemporaryDirectory() as d:
                for k, v in cms[0]["data"].items():
                    (Path(d) / k).write_text(v)
                reg = ROOT / "src" / "appmesh" / "testdata" / "colorapp.registry.yaml"
                r = subprocess.run([str(BINARY), "render", "--registry-file", str(reg), "--appmesh-file", d],
                                   capture_output=True, text=True, timeout=30)
                R.check("appMesh: cloudmap-mcp render translates the mounted directory",
                        r.returncode == 0 and "kind: VirtualService" in r.stdout, r.stderr[-1000:])
    p = helm_template(helm_bin)
    if p.returncode == 0:
        names = [d["metadata"]["name"] for d in load_docs(p.stdout) if d.get("kind") == "ConfigMap"]
        R.check("appMesh: no ConfigMap by default", not any(n.endswith("-appmesh") for n in names), str(names))

    # Every server flag is exposed by the chart.
    tmpl = (CHART / "templates" / "deployment.yaml").read_text()
    missing = sorted(n for n in known if n not in tmpl)
    R.check("chart exposes every server flag", not missing, f"not in templates/deployment.yaml: {missing}")
    return renders.get("cert_dns_names")


def check_registry_with_binary(label: str, content: str) -> None:
    if not BINARY.exists():
        print(f"skip {label}: no {BINARY.relative_to(ROOT)} to render the registry with")
        return
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(content)
        path = f.name
    try:
        p = subprocess.run([str(BINARY), "render", "--registry-file", path], capture_output=True, text=True, timeout=30)
        R.check(f"{label}: cloudmap-mcp render accepts it", p.returncode == 0 and "kind: ServiceEntry" in p.stdout, p.stderr[-1000:])
    finally:
        os.unlink(path)


# ---------------------------------------------------------------------------------------------
# kustomize
# ---------------------------------------------------------------------------------------------

def check_kustomize(kubectl: str | None, known: set[str]) -> None:
    dirs = [KUSTOMIZE / "base"] + sorted(p for p in (KUSTOMIZE / "overlays").iterdir() if p.is_dir())
    for d in sorted(glob.glob(str(KUSTOMIZE / "**" / "*.yaml"), recursive=True)):
        try:
            list(yaml.safe_load_all(Path(d).read_text()))
            R.check(f"kustomize file parses: {Path(d).relative_to(ROOT)}", True)
        except yaml.YAMLError as e:
            R.check(f"kustomize file parses: {Path(d).relative_to(ROOT)}", False, str(e))
    named = set()
    for f in glob.glob(str(KUSTOMIZE / "**" / "*.yaml"), recursive=True):
        named |= set(re.findall(r"\bCLOUDMAP_MCP_[A-Z0-9_]+", Path(f).read_text()))
    unknown = sorted(n for n in named if n not in known)
    R.check("deploy/kubernetes names only real flags (all files, patches included)", not unknown, f"unknown: {unknown}")
    if kubectl is None:
        print("note: kubectl not found; checking deploy/kubernetes/base as written (no overlay builds)")
        docs = []
        kust = yaml.safe_load((KUSTOMIZE / "base" / "kustomization.yaml").read_text())
        for r in kust["resources"]:
            docs += load_docs((KUSTOMIZE / "base" / r).read_text())
        check_workload("kustomize base (raw)", docs, known, expect_mode="cloudmap")
        return
    # components/shards on the base: one container and Service port per shard, and the flag.
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "kustomization.yaml").write_text(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
            f"resources: [{os.path.relpath(KUSTOMIZE / 'base', tmp)}]\n"
            f"components: [{os.path.relpath(KUSTOMIZE / 'components' / 'shards', tmp)}]\n")
        p = subprocess.run([kubectl, "kustomize", "--load-restrictor", "LoadRestrictionsNone", tmp],
                           capture_output=True, text=True, timeout=120)
        if R.check("kubectl kustomize base + components/shards", p.returncode == 0, p.stderr[-1500:]):
            docs = load_docs(p.stdout)
            c = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
            want = {"grpc": 15010, "grpc-1": 15011, "grpc-2": 15012, "grpc-3": 15013}
            cports = {x["name"]: x["containerPort"] for x in c["ports"] if x["name"].startswith("grpc")}
            sports = {x["name"]: x["port"] for x in one(docs, "Service")["spec"]["ports"] if x["name"].startswith("grpc")}
            env = {e["name"]: e.get("value") for e in c["env"]}
            R.check("components/shards: 4 shards on 15010-15013 (container and Service ports)",
                    cports == want and sports == want and env.get("CLOUDMAP_MCP_SHARDS") == "4", f"{cports} {sports}")
    for d in dirs:
        rel = d.relative_to(ROOT)
        p = subprocess.run([kubectl, "kustomize", str(d)], capture_output=True, text=True, timeout=120)
        if not R.check(f"kubectl kustomize {rel}", p.returncode == 0, p.stderr[-1500:]):
            continue
        docs = load_docs(p.stdout)
        R.check(f"{rel}: every object in istio-system", all(x["metadata"].get("namespace") == "istio-system" for x in docs),
                str([(x["kind"], x["metadata"].get("namespace")) for x in docs]))
        mode = "registryFile" if d.name == "registry-file" else "cloudmap"
        w = check_workload(str(rel), docs, known, expect_mode=mode)
        R.check(f"{rel}: Service cloudmap-mcp on 15010/15014",
                w["svc"]["metadata"]["name"] == "cloudmap-mcp"
                and {p["name"]: p["port"] for p in w["svc"]["spec"]["ports"]} == {"grpc": 15010, "http-admin": 15014})
        if d.name.startswith("eks-"):
            R.check(f"{rel}: region set", "CLOUDMAP_MCP_AWS_REGION" in w["env"])
            R.check(f"{rel}: image from a registry", "/" in w["container"]["image"], w["container"]["image"])
            R.check(f"{rel}: NetworkPolicy included", len(by_kind(docs, "NetworkPolicy")) == 1)
        if d.name.startswith("eks-irsa"):
            sa = one(docs, "ServiceAccount")
            R.check(f"{rel}: IRSA annotation", "eks.amazonaws.com/role-arn" in (sa["metadata"].get("annotations") or {}))
        if d.name == "eks-pod-identity":
            sa = one(docs, "ServiceAccount")
            R.check(f"{rel}: no IRSA annotation", "eks.amazonaws.com/role-arn" not in (sa["metadata"].get("annotations") or {}))
        if d.name.endswith("-tls"):
            R.check(f"{rel}: TLS env set", "CLOUDMAP_MCP_TLS_CERT_FILE" in w["env"])
            R.check(f"{rel}: Certificate included", len(by_kind(docs, "Certificate")) == 1)
        if d.name == "registry-file":
            cm = one(docs, "ConfigMap")
            key = os.path.basename(w["env"]["CLOUDMAP_MCP_REGISTRY_FILE"]["value"])
            R.check(f"{rel}: ConfigMap holds the registry file", key in cm["data"])
            check_registry_with_binary(f"{rel} registry", cm["data"].get(key, ""))


# ---------------------------------------------------------------------------------------------
# istiod snippets, IAM, Dockerfile, docs
# ---------------------------------------------------------------------------------------------

def config_mesh(doc: dict) -> dict | None:
    if doc.get("kind") == "IstioOperator":
        return doc.get("spec", {}).get("meshConfig")
    return doc.get("meshConfig")


def config_sources(doc: dict) -> list[dict] | None:
    return (config_mesh(doc) or {}).get("configSources")


def check_istio(cert_dns_names: list[str] | None) -> None:
    files = sorted(ISTIO.glob("*.yaml"))
    R.check("deploy/istio has snippets", len(files) >= 4, str(files))
    kinds = set()
    for f in files:
        rel = f.relative_to(ROOT)
        try:
            docs = load_docs(f.read_text())
        except yaml.YAMLError as e:
            R.check(f"{rel} parses", False, str(e))
            continue
        R.check(f"{rel} parses", len(docs) == 1)
        doc = docs[0]
        kinds.add("IstioOperator" if doc.get("kind") == "IstioOperator" else "helm-values")
        if doc.get("kind") == "IstioOperator":
            R.check(f"{rel}: IstioOperator apiVersion", doc.get("apiVersion") == "install.istio.io/v1alpha1")
        srcs = config_sources(doc) or []
        addrs = [s.get("address", "") for s in srcs]
        xds = [s for s in srcs if s.get("address", "").startswith("xds://")]
        R.check(f"{rel}: lists an xds:// source", len(xds) == 1, str(addrs))
        R.check(f"{rel}: lists k8s://", "k8s://" in addrs, str(addrs))
        if xds:
            R.check(f"{rel}: xds address is the chart's Service", xds[0]["address"] == "xds://cloudmap-mcp.istio-system.svc:15010",
                    xds[0]["address"])
        tls = xds[0].get("tlsSettings") if xds else None
        if "tls" in f.stem:
            kinds.add("tls")
            ok = isinstance(tls, dict)
            R.check(f"{rel}: tlsSettings", ok)
            if ok:
                R.check(f"{rel}: mode SIMPLE", tls.get("mode") == "SIMPLE", str(tls.get("mode")))
                ca = tls.get("caCertificates", "")
                R.check(f"{rel}: caCertificates is inline PEM", "-----BEGIN CERTIFICATE-----" in ca and "-----END CERTIFICATE-----" in ca)
                sans = tls.get("subjectAltNames") or []
                R.check(f"{rel}: subjectAltNames", len(sans) >= 1)
                if cert_dns_names:
                    R.check(f"{rel}: SANs and sni are in the chart's Certificate",
                            all(s in cert_dns_names for s in sans + [tls.get("sni", sans[0] if sans else "")]),
                            f"{sans} vs {cert_dns_names}")
                host = xds[0]["address"][len("xds://"):].rsplit(":", 1)[0]
                R.check(f"{rel}: address host is a SAN or the sni", host in sans or host == tls.get("sni"))
        else:
            R.check(f"{rel}: plaintext (no tlsSettings)", tls is None)
        pm = ((config_mesh(doc) or {}).get("defaultConfig") or {}).get("proxyMetadata") or {}
        R.check(f"{rel}: DNS capture on sidecars", pm.get("ISTIO_META_DNS_CAPTURE") == "true", str(pm))
        R.check(f"{rel}: no reliance on istiod's deprecated VIP allocator",
                "ISTIO_META_DNS_AUTO_ALLOCATE" not in pm
                and "PILOT_ENABLE_IP_AUTOALLOCATE" not in str((doc.get("pilot") or {}).get("env") or {}))
    R.check("deploy/istio covers IstioOperator, Helm values and TLS", {"IstioOperator", "helm-values", "tls"} <= kinds, str(kinds))
    readme = (ISTIO / "README.md").read_text()
    R.check("deploy/istio/README.md explains DNS capture", "ISTIO_META_DNS_CAPTURE" in readme)


def check_iam() -> None:
    p = ROOT / "deploy" / "iam-policy.json"
    doc = json.loads(p.read_text())
    R.check("iam-policy.json: Version 2012-10-17", doc.get("Version") == "2012-10-17")
    actions: set[str] = set()
    for st in doc.get("Statement", []):
        R.check(f"iam-policy.json: statement {st.get('Sid')} is Allow", st.get("Effect") == "Allow")
        a = st.get("Action", [])
        actions |= set([a] if isinstance(a, str) else a)
    R.check("iam-policy.json: exactly the read-only Cloud Map actions", actions == READ_ONLY_ACTIONS,
            f"extra {sorted(actions - READ_ONLY_ACTIONS)}, missing {sorted(READ_ONLY_ACTIONS - actions)}")
    R.check("iam-policy.json: no wildcard actions", not any("*" in a for a in actions))


# --- event-driven refresh: deploy/cloudformation/events.yaml, deploy/terraform/events -----------

EVENTS_CONSUMER_ACTIONS = {"sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"}


def server_event_calls() -> set[str]:
    """The Cloud Map calls the server acts on (match arms of src/source/cloudmap/events/parse.rs)."""
    text = (ROOT / "src" / "source" / "cloudmap" / "events" / "parse.rs").read_text()
    body = text.split("fn cloud_map_call", 1)[1].split("\nfn ", 1)[0]
    return set(re.findall(r'"([A-Z][A-Za-z]+)"\s*(?:=>|\|)', body))


class CfnLoader(yaml.SafeLoader):
    """YAML with the CloudFormation short tags (!Ref, !GetAtt, !If, ...) as {"Fn::...": ...}."""


def _cfn_tag(loader, tag_suffix, node):
    name = "Ref" if tag_suffix == "Ref" else f"Fn::{tag_suffix}"
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
        if tag_suffix == "GetAtt":
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {name: value}


CfnLoader.add_multi_constructor("!", _cfn_tag)


def hcl_str(v) -> str:
    return v.strip('"') if isinstance(v, str) else v


def check_events_deploy() -> None:
    calls = server_event_calls()
    R.check("parse.rs: Cloud Map calls the server acts on found", {"RegisterInstance", "DeregisterInstance"} <= calls, str(calls))

    # IAM policy for the consumer.
    doc = json.loads((ROOT / "deploy" / "iam-policy-events.json").read_text())
    actions = {a for st in doc["Statement"] for a in st["Action"]}
    R.check("iam-policy-events.json: exactly the three SQS consumer actions", actions == EVENTS_CONSUMER_ACTIONS, str(actions))

    # CloudFormation.
    cfn_path = ROOT / "deploy" / "cloudformation" / "events.yaml"
    cfn = yaml.load(cfn_path.read_text(), Loader=CfnLoader)
    res = cfn.get("Resources", {})
    by_type: dict[str, list[tuple[str, dict]]] = {}
    for name, r in res.items():
        by_type.setdefault(r["Type"], []).append((name, r.get("Properties", {})))
    queues = by_type.get("AWS::SQS::Queue", [])
    R.check("cfn: one SQS queue", len(queues) == 1, str(queues))
    queue = queues[0][0] if queues else None
    rules = dict(by_type.get("AWS::Events::Rule", []))
    cm = [p for p in rules.values() if p.get("EventPattern", {}).get("source") == ["aws.servicediscovery"]]
    if R.check("cfn: a rule for Cloud Map CloudTrail events", len(cm) == 1, str(rules)):
        pat = cm[0]["EventPattern"]
        R.check("cfn: the rule is on the default bus", cm[0].get("EventBusName", "default") == "default")
        R.check("cfn: detail-type AWS API Call via CloudTrail", pat.get("detail-type") == ["AWS API Call via CloudTrail"])
        R.check("cfn: eventSource servicediscovery.amazonaws.com",
                pat.get("detail", {}).get("eventSource") == ["servicediscovery.amazonaws.com"])
        names = set(pat.get("detail", {}).get("eventName", []))
        R.check("cfn: the rule sends every call the server acts on, and only those", names == calls,
                f"rule only: {sorted(names - calls)}, server only: {sorted(calls - names)}")
        R.check("cfn: the rule targets the queue",
                any(t.get("Arn") == {"Fn::GetAtt": [queue, "Arn"]} for t in cm[0].get("Targets", [])))
    ecs = [p for p in rules.values() if p.get("EventPattern", {}).get("source") == ["aws.ecs"]]
    R.check("cfn: optional ECS task state rule", len(ecs) == 1 and ecs[0]["EventPattern"].get("detail-type") == ["ECS Task State Change"])
    qp = by_type.get("AWS::SQS::QueuePolicy", [])
    if R.check("cfn: a queue policy", len(qp) == 1):
        st = qp[0][1]["PolicyDocument"]["Statement"]
        ok = [s for s in st if s.get("Principal", {}).get("Service") == "events.amazonaws.com"
              and s.get("Action") == "sqs:SendMessage" and "aws:SourceArn" in json.dumps(s.get("Condition", {}))]
        R.check("cfn: queue policy lets events.amazonaws.com send, limited to the rules (aws:SourceArn)", len(ok) == 1, str(st))
    pol = by_type.get("AWS::IAM::ManagedPolicy", [])
    if R.check("cfn: a consumer policy", len(pol) == 1):
        acts = {a for s in pol[0][1]["PolicyDocument"]["Statement"] for a in s["Action"]}
        R.check("cfn: consumer policy has exactly the three SQS actions", acts == EVENTS_CONSUMER_ACTIONS, str(acts))
    R.check("cfn: outputs the queue URL", "QueueUrl" in cfn.get("Outputs", {}))
    lint = shutil.which("cfn-lint") or (str(ROOT / ".venv" / "bin" / "cfn-lint") if (ROOT / ".venv" / "bin" / "cfn-lint").exists() else None)
    if lint:
        p = subprocess.run([lint, str(cfn_path)], capture_output=True, text=True)
        R.check("cfn-lint deploy/cloudformation/events.yaml", p.returncode == 0, p.stdout[-2000:] + p.stderr[-1000:])
    else:
        print("skip cfn-lint (not installed)")

    # Terraform.
    tf_dir = ROOT / "deploy" / "terraform" / "events"
    try:
        import hcl2  # type: ignore
    except ImportError:
        hcl2 = None
        print("skip HCL parse (python-hcl2 not installed)")
    if hcl2 is not None:
        resources: dict[str, dict] = {}
        data: dict[str, dict] = {}
        local_vals: dict = {}
        for f in sorted(tf_dir.glob("*.tf")):
            with open(f) as fh:
                d = hcl2.load(fh)
            for block in d.get("resource", []):
                for typ, named in block.items():
                    for name, body in named.items():
                        resources[f"{hcl_str(typ)}.{hcl_str(name)}"] = body
            for block in d.get("data", []):
                for typ, named in block.items():
                    for name, body in named.items():
                        data[f"{hcl_str(typ)}.{hcl_str(name)}"] = body
            for block in d.get("locals", []):
                local_vals.update(block)
        R.check("tf: an SQS queue", any(k.startswith("aws_sqs_queue.") for k in resources), str(sorted(resources)))
        rule = resources.get("aws_cloudwatch_event_rule.cloud_map_api_calls", {})
        pattern = str(rule.get("event_pattern", ""))
        R.check("tf: Cloud Map rule pattern (source, detail-type, eventSource)",
                all(x in pattern for x in ('aws.servicediscovery', 'AWS API Call via CloudTrail', 'servicediscovery.amazonaws.com')), pattern)
        tf_calls = {hcl_str(c) for c in local_vals.get("cloud_map_calls", [])}
        R.check("tf: the rule sends every call the server acts on, and only those", tf_calls == calls,
                f"rule only: {sorted(tf_calls - calls)}, server only: {sorted(calls - tf_calls)}")
        R.check("tf: rule on the default bus", hcl_str(rule.get("event_bus_name")) == "default")
        R.check("tf: the rule targets the queue",
                "aws_sqs_queue.events.arn" in str(resources.get("aws_cloudwatch_event_target.cloud_map_api_calls", {}).get("arn")))
        qdoc = data.get("aws_iam_policy_document.queue", {})
        st = (qdoc.get("statement") or [{}])[0]
        R.check("tf: queue policy lets events.amazonaws.com send, limited to the rules",
                [hcl_str(a) for a in st.get("actions", [])] == ["sqs:SendMessage"]
                and "events.amazonaws.com" in str(st.get("principals"))
                and "aws:SourceArn" in str(st.get("condition")), str(st))
        cdoc = data.get("aws_iam_policy_document.consumer", {})
        acts = {hcl_str(a) for s in cdoc.get("statement", []) for a in s.get("actions", [])}
        R.check("tf: consumer policy has exactly the three SQS actions", acts == EVENTS_CONSUMER_ACTIONS, str(acts))
        R.check("tf: queue policy resource", "aws_sqs_queue_policy.events" in resources)
    tf = shutil.which("terraform") or shutil.which("tofu")
    if tf:
        p = subprocess.run([tf, "fmt", "-check", "-diff", str(tf_dir)], capture_output=True, text=True)
        R.check(f"{Path(tf).name} fmt -check deploy/terraform/events", p.returncode == 0, p.stdout[-2000:])
    else:
        print("skip terraform fmt (terraform not installed)")

    # The docs state the CloudTrail requirement.
    text = (ROOT / "docs" / "cloudmap.md").read_text()
    R.check("docs/cloudmap.md states the CloudTrail trail requirement", "trail" in text and "management events" in text)


def check_dockerfile() -> None:
    text = (ROOT / "Dockerfile").read_text()
    lines = [l.strip() for l in text.splitlines() if l.strip() and not l.strip().startswith("#")]
    froms = [l for l in lines if l.upper().startswith("FROM ")]
    R.check("Dockerfile: multi-stage", len(froms) >= 2, str(froms))
    R.check("Dockerfile: cargo build --release --locked", re.search(r"cargo build --release --locked", text) is not None)
    users = [l for l in lines if l.upper().startswith("USER ")]
    R.check("Dockerfile: runs as 65532", bool(users) and users[-1].split()[1].split(":")[0] == "65532", str(users))
    gp, ap = default_ports()
    expose = set()
    for l in lines:
        if l.upper().startswith("EXPOSE "):
            expose |= {int(x.split("/")[0]) for x in l.split()[1:]}
    R.check("Dockerfile: exposes the default ports", {gp, ap} <= expose, str(expose))
    ep = [l for l in lines if l.upper().startswith("ENTRYPOINT")]
    R.check("Dockerfile: ENTRYPOINT cloudmap-mcp serve", bool(ep) and json.loads(ep[-1][len("ENTRYPOINT"):].strip())[-1] == "serve", str(ep))
    di = (ROOT / ".dockerignore").read_text().split()
    R.check(".dockerignore excludes target/ and .git/", any(x.strip("/") == "target" for x in di) and any(x.strip("/") == ".git" for x in di))


def metric_names() -> set[str]:
    names = set()
    for p in src_files():
        text = p.read_text()
        names |= set(re.findall(r'"(cloudmap_mcp_[a-z0-9_]+)"', text))
        if re.search(r'concat!\("cloudmap_mcp_", \$name\)', text):
            names |= {"cloudmap_mcp_" + n for n in re.findall(r'reg!\(\s*"([a-z0-9_]+)"', text)}
    return names


def check_docs(known: set[str]) -> None:
    p = ROOT / "docs" / "operations.md"
    if not R.check("docs/operations.md exists", p.exists()):
        return
    text = p.read_text()
    names = metric_names()
    R.check("metrics found in src/", len(names) >= 5, str(sorted(names)))
    missing = sorted(n for n in names if not re.search(rf"\b{n}(_total)?\b", text))
    R.check("docs/operations.md documents every metric", not missing, f"missing: {missing}")
    routes = set()
    for f in src_files():
        routes |= set(re.findall(r'\.route\(\s*"(/[a-z/]+)"', f.read_text()))
    R.check("admin routes found in src/", {"/healthz", "/readyz", "/metrics"} <= routes, str(sorted(routes)))
    undocumented = sorted(r for r in routes if f"`{r}`" not in text)
    R.check("docs/operations.md documents every admin route", not undocumented, f"missing: {undocumented}")
    for topic in ("k8s://", "eks.amazonaws.com/role-arn",
                  "create-pod-identity-association", "helm upgrade", "iam-policy.json"):
        R.check(f"docs/operations.md mentions {topic}", topic in text)
    undocumented = sorted(n for n in known if n not in text)
    R.check("docs/operations.md configuration table covers every flag", not undocumented, f"missing: {undocumented}")
    docs_env = set(re.findall(r"CLOUDMAP_MCP_[A-Z0-9_]+", text))
    stale = sorted(n for n in docs_env if n not in known)
    R.check("docs/operations.md names only real env vars", not stale, f"unknown: {stale}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--helm", required=True)
    ap.add_argument("--kubectl", default=shutil.which("kubectl"), help='"" to skip kustomize builds')
    args = ap.parse_args()
    args.kubectl = args.kubectl or None

    known, origin = known_flags()
    print(f"server flags: {len(known)} CLOUDMAP_MCP_* env vars from {origin}")
    R.check("server flags found", len(known) >= 10, str(sorted(known)))

    cert_dns = R.run("helm", check_helm, args.helm, known)
    R.run("kustomize", check_kustomize, args.kubectl, known)
    R.run("istio", check_istio, cert_dns)
    R.run("iam", check_iam)
    R.run("events", check_events_deploy)
    R.run("dockerfile", check_dockerfile)
    R.run("docs", check_docs, known)

    print(f"{R.passed} passed, {R.failed} failed")
    return 1 if R.failed else 0


if __name__ == "__main__":
    sys.exit(main())
