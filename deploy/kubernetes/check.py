"""Validates deploy/kubernetes offline: built-in kinds against the Kubernetes schemas
(kubernetes-validate), the ServiceMonitor against schemas/servicemonitor.json, and that
every file the kustomization lists exists and every manifest is listed."""
import json
import os
import subprocess
import sys

import jsonschema
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
K8S_VERSION = "1.32.0"  # preStop `sleep` is GA from 1.30


def main():
    kustomization = yaml.safe_load(open(os.path.join(HERE, "kustomization.yaml")))
    listed = kustomization["resources"]
    present = sorted(f for f in os.listdir(HERE)
                     if f.endswith(".yaml") and f != "kustomization.yaml")
    problems = []
    if sorted(listed) != present:
        problems.append(f"kustomization lists {sorted(listed)}, directory holds {present}")
    builtin = []
    for name in listed:
        for doc in yaml.safe_load_all(open(os.path.join(HERE, name))):
            if doc["kind"] == "ServiceMonitor":
                schema = json.load(open(os.path.join(HERE, "schemas", "servicemonitor.json")))
                try:
                    jsonschema.validate(doc, schema)
                except jsonschema.ValidationError as e:
                    problems.append(f"{name}: {e.message}")
            else:
                builtin.append(os.path.join(HERE, name))
    r = subprocess.run(["kubernetes-validate", "--strict", "-k", K8S_VERSION, *builtin],
                       capture_output=True, text=True)
    print(r.stdout, end="")
    if r.returncode != 0:
        problems.append(r.stderr.strip() or "kubernetes-validate failed")
    for p in problems:
        print(f"deploy/kubernetes: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
