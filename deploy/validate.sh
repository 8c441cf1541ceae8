#!/usr/bin/env bash
# Validates what can be checked without a container engine or a cluster:
# the compose file against the Compose Specification schema, and every
# Kubernetes manifest against the Kubernetes API schemas (KEDA's custom
# resources against the required fields of their CRDs).
#   pip install check-jsonschema kubernetes-validate
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
for tool in check-jsonschema kubernetes-validate; do
  command -v "$tool" >/dev/null || { echo "$tool is missing: pip install check-jsonschema kubernetes-validate" >&2; exit 1; }
done
check-jsonschema --builtin-schema vendor.compose-spec "$here/compose.yaml"
"$here/k8s/configmaps.sh" >/dev/null
merged=$(mktemp --suffix=.yaml)
trap 'rm -f "$merged"' EXIT
# The Deployment as kustomize sends it: volumes merged by name from the patch.
python3 - "$here/k8s/deployment.yaml" "$here/k8s/volumes-patch.yaml" "$merged" <<'PY'
import json, sys, yaml
deployment = yaml.safe_load(open(sys.argv[1]))
patch = yaml.safe_load(open(sys.argv[2]))["spec"]["template"]["spec"]["volumes"]
volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
for v in patch:
    assert v["name"] in volumes, f"the patch names volume {v['name']} the Deployment lacks"
    volumes[v["name"]] = v
deployment["spec"]["template"]["spec"]["volumes"] = list(volumes.values())
json.dump(deployment, open(sys.argv[3], "w"))
PY
for f in "$merged" "$here"/k8s/{service,pdb,secret.example,tls-secret.example,configmaps}.yaml; do
  kubernetes-validate --strict --kubernetes-version 1.30.0 "$f"
done
python3 - "$here/k8s/scaledobject.yaml" "$here/Dockerfile" <<'PY'
import sys, yaml
docs = list(yaml.safe_load_all(open(sys.argv[1])))
kinds = {d["kind"]: d for d in docs}
so, ta = kinds["ScaledObject"], kinds["TriggerAuthentication"]
assert so["apiVersion"] == "keda.sh/v1alpha1" and ta["apiVersion"] == "keda.sh/v1alpha1"
assert so["spec"]["scaleTargetRef"]["name"] == "referral-router"
t = so["spec"]["triggers"][0]
assert t["type"] == "rabbitmq" and t["metadata"]["protocol"] in ("amqp", "http") and t["metadata"]["queueName"]
assert t["authenticationRef"]["name"] == ta["metadata"]["name"]
assert all({"parameter", "name", "key"} <= set(r) for r in ta["spec"]["secretTargetRef"])
text = open(sys.argv[2]).read()
assert text.count("FROM ") >= 2 and "USER 10001" in text, "multi-stage, non-root"
print(f"{sys.argv[1]}: ScaledObject and TriggerAuthentication are well-formed")
PY
echo "deploy: valid"
