"""Regenerate tests/data/schemas/kubernetes-<version>/: standalone, strict JSON schemas of the
Kubernetes kinds deploy/k8s uses, from the Kubernetes OpenAPI v3 spec, for kubeconform offline.

The spec comes from the Go module proxy (the module k8s.io/kubernetes carries api/openapi-spec/v3):
    go mod download -json k8s.io/kubernetes@v1.34.2   # prints "Dir"
    python tests/data/schemas/build_kubernetes_schemas.py <Dir>/api/openapi-spec/v3
It does what openapi2jsonschema (the tool behind yannh/kubernetes-json-schema, kubeconform's default
schemas) does for its "-standalone-strict" folders: every $ref inlined, and objects that list their
properties refuse others (kubeconform -strict looks the same files up). Descriptions are dropped to
keep the files small. File names follow kubeconform's template {{.ResourceKind}}{{.KindSuffix}}.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

VERSION = "v1.34.2"
# (spec file, kind): every Kubernetes kind a manifest under deploy/k8s may use.
KINDS = [
    ("api__v1_openapi.json", "io.k8s.api.core.v1.Namespace"),
    ("api__v1_openapi.json", "io.k8s.api.core.v1.ConfigMap"),
    ("api__v1_openapi.json", "io.k8s.api.core.v1.Secret"),
    ("api__v1_openapi.json", "io.k8s.api.core.v1.Service"),
    ("api__v1_openapi.json", "io.k8s.api.core.v1.ServiceAccount"),
    ("api__v1_openapi.json", "io.k8s.api.core.v1.PersistentVolumeClaim"),
    ("apis__apps__v1_openapi.json", "io.k8s.api.apps.v1.StatefulSet"),
    ("apis__apps__v1_openapi.json", "io.k8s.api.apps.v1.Deployment"),
    ("apis__batch__v1_openapi.json", "io.k8s.api.batch.v1.CronJob"),
    ("apis__batch__v1_openapi.json", "io.k8s.api.batch.v1.Job"),
    ("apis__policy__v1_openapi.json", "io.k8s.api.policy.v1.PodDisruptionBudget"),
    ("apis__networking.k8s.io__v1_openapi.json", "io.k8s.api.networking.v1.NetworkPolicy"),
]


def inline(node: Any, schemas: dict[str, Any], seen: tuple[str, ...] = ()) -> Any:
    if isinstance(node, list):
        return [inline(item, schemas, seen) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        if name in seen:  # recursive types (none in workload kinds): accept anything there
            return {}
        return inline(schemas[name], schemas, (*seen, name))
    out = {k: inline(v, schemas, seen) for k, v in node.items() if k != "description"}
    # `allOf: [one ref]` is how OpenAPI v3 attaches a default to a referenced type.
    if list(out.get("allOf", [])) and len(out["allOf"]) == 1:
        merged = {**out["allOf"][0], **{k: v for k, v in out.items() if k != "allOf"}}
        out = merged
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def main(spec_dir: Path) -> None:
    target = Path(__file__).parent / f"kubernetes-{VERSION}"
    target.mkdir(exist_ok=True)
    for spec_file, name in KINDS:
        schemas = json.loads((spec_dir / spec_file).read_text())["components"]["schemas"]
        schema = inline(schemas[name], schemas, (name,))
        gvk = schema.pop("x-kubernetes-group-version-kind")[0]
        group = gvk["group"].split(".")[0]
        suffix = f"-{group}-{gvk['version']}" if group else f"-{gvk['version']}"
        schema["$schema"] = "http://json-schema.org/schema#"
        path = target / f"{gvk['kind'].lower()}{suffix}.json"
        path.write_text(json.dumps(schema, sort_keys=True, separators=(",", ":")) + "\n")
        print(path.name, path.stat().st_size)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
