"""The change summary of a helm release: rendered manifests compared, no data shown."""

from __future__ import annotations

from wrktalk_agent_helm.changes import summarize_manifests

OLD = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: app}
spec:
  template:
    spec:
      containers:
        - {name: web, image: "registry.local/web:1.0.0"}
        - {name: sidecar, image: "registry.local/proxy:2"}
---
apiVersion: v1
kind: Secret
metadata: {name: creds, namespace: app}
data: {password: aHVudGVyMg==}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: legacy, namespace: app}
data: {a: "1"}
"""

NEW = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: app}
spec:
  template:
    spec:
      containers:
        - {name: web, image: "registry.local/web:1.1.0"}
        - {name: sidecar, image: "registry.local/proxy:2"}
---
apiVersion: v1
kind: Secret
metadata: {name: creds, namespace: app}
data: {password: czNjcjN0}
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: app}
spec: {ports: [{port: 80}]}
"""


def test_a_release_that_adds_a_resource_and_changes_an_image() -> None:
    assert summarize_manifests(OLD, NEW) == [
        "added Service/app/api",
        "removed ConfigMap/app/legacy",
        "changed Deployment/app/web",
        "image of Deployment/app/web container web: registry.local/web:1.0.0 -> "
        "registry.local/web:1.1.0",
        "changed Secret/app/creds",
    ]


def test_a_first_release_lists_everything_as_added_and_no_data() -> None:
    lines = summarize_manifests(None, NEW)
    assert lines == ["added Deployment/app/web", "added Secret/app/creds", "added Service/app/api"]
    assert not any("czNjcjN0" in line for line in lines)


def test_the_same_release_changes_nothing() -> None:
    assert summarize_manifests(NEW, NEW) == []
