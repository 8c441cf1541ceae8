#!/usr/bin/env bash
# Writes the ConfigMaps for rules/ and templates/ (configmaps.yaml) and the
# Deployment patch that mounts every file at its path (volumes-patch.yaml).
# ConfigMap keys cannot hold '/', so nested files get flat keys and the
# patch's `items` put them back in their folders.
#   deploy/k8s/configmaps.sh && kubectl apply -k deploy/k8s
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
python3 - "$root" "$here" <<'PY'
import json, pathlib, sys
root, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
def files(folder, skip=()):
    base = root / folder
    return sorted(p for p in base.rglob("*") if p.is_file() and not any(part in skip for part in p.relative_to(base).parts))
def key(rel):
    return str(rel).replace("/", "__")
docs, volumes = [], []
for name, folder, skip in [("referral-router-rules", "rules", ("tests",)), ("referral-router-templates", "templates", ())]:
    paths = files(folder, skip)
    data = {key(p.relative_to(root / folder)): p.read_text() for p in paths}
    docs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data})
    volumes.append({"name": folder, "configMap": {"name": name, "items": [
        {"key": key(p.relative_to(root / folder)), "path": str(p.relative_to(root / folder))} for p in paths]}})
# JSON is YAML: exact, and no quoting surprises in template text.
(out / "configmaps.yaml").write_text("\n---\n".join(json.dumps(d, indent=1) for d in docs) + "\n")
patch = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "referral-router"},
         "spec": {"template": {"spec": {"volumes": volumes}}}}
(out / "volumes-patch.yaml").write_text(json.dumps(patch, indent=1) + "\n")
PY
echo "wrote $here/configmaps.yaml and $here/volumes-patch.yaml"
