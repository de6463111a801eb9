#!/usr/bin/env python3
"""Writes a registry file shaped like the benchmark's synthetic registry (ECS services in Cloud Map).

usage: gen-registry.py SERVICES INSTANCES_PER_SERVICE OUT [GENERATION]

DNS_PRIVATE namespaces of 100 services; every instance has an IPv4, a port, region/zone and a few
custom attributes. GENERATION (default 0) moves the first address of service GENERATION % SERVICES, so
consecutive generations differ in exactly one ServiceEntry. The file is written atomically
(temporary file + rename), as editors and ConfigMap updates do. 10,000 x 10 is about 34 MB.
An OUT ending in `.json` gets the same registry as JSON (about 46 MB at 10,000 x 10).
"""
import json
import os
import sys


def ipv4(n):
    return f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"


def main():
    services, per, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    gen = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    moved = gen % services if gen else -1
    as_json = out.endswith(".json")
    lines = ['{"namespaces": ['] if as_json else ["namespaces:"]
    for n in range((services + 99) // 100):
        ns_id = f"ns-{0x5eed00000000 + n:016x}"
        ns = {
            "name": f"ns-{n:04}.prod.internal",
            "type": "DNS_PRIVATE",
            "id": ns_id,
            "arn": f"arn:aws:servicediscovery:us-east-1:123456789012:namespace/{ns_id}",
        }
        svcs = []
        for s in range(n * 100, min((n + 1) * 100, services)):
            sid = f"srv-{0xab00000000 + s:016x}"
            name = f"svc-{s:05}"
            insts = []
            for e in range(per):
                i = s * per + e
                addr = f"172.{16 + ((gen >> 16) & 15)}.{(gen >> 8) & 255}.{gen & 255}" if (s == moved and e == 0) else ipv4(i)
                insts.append((f"{0x1d00000000 + i:032x}", {
                    "AWS_INSTANCE_IPV4": addr, "AWS_INSTANCE_PORT": "8080", "AWS_INIT_HEALTH_STATUS": "HEALTHY",
                    "REGION": "us-east-1", "AVAILABILITY_ZONE": f"us-east-1{'abc'[e % 3]}", "ECS_CLUSTER_NAME": "prod",
                    "ECS_SERVICE_NAME": name, "version": f"v{1 + e % 2}",
                }))
            svcs.append(({
                "name": name,
                "id": sid,
                "arn": f"arn:aws:servicediscovery:us-east-1:123456789012:service/{sid}",
                "createDate": f"{2020 + s % 5}-06-01T00:00:00Z",
            }, insts))
        if as_json:
            body = ",\n".join(
                json.dumps(svc)[:-1] + ', "instances": [\n' + ",\n".join(
                    json.dumps({"id": iid, "healthStatus": "HEALTHY", "attributes": attrs}) for iid, attrs in insts
                ) + "]}"
                for svc, insts in svcs
            )
            lines.append(("," if n else "") + json.dumps(ns)[:-1] + ', "services": [\n' + body + "]}")
            continue
        lines += [f"  - name: {ns['name']}", f"    type: {ns['type']}", f"    id: {ns['id']}", f"    arn: {ns['arn']}",
                  "    services:"]
        for svc, insts in svcs:
            lines += [
                f"      - name: {svc['name']}",
                f"        id: {svc['id']}",
                f"        arn: {svc['arn']}",
                f'        createDate: "{svc["createDate"]}"',
                "        instances:",
            ]
            for iid, a in insts:
                lines += [
                    f"          - id: {iid}",
                    "            healthStatus: HEALTHY",
                    "            attributes: {"
                    f"AWS_INSTANCE_IPV4: {a['AWS_INSTANCE_IPV4']}, AWS_INSTANCE_PORT: \"8080\", AWS_INIT_HEALTH_STATUS: HEALTHY, "
                    f"REGION: us-east-1, AVAILABILITY_ZONE: {a['AVAILABILITY_ZONE']}, ECS_CLUSTER_NAME: prod, "
                    f"ECS_SERVICE_NAME: {a['ECS_SERVICE_NAME']}, version: {a['version']}}}",
                ]
    if as_json:
        lines.append("]}")
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.rename(tmp, out)


if __name__ == "__main__":
    main()
