"""The real helm (v4, from the lambda-layer wheel) against the sandbox: a chart with a crds/ folder."""
from __future__ import annotations

import base64
import gzip
import json

from sandbox_helpers import FIXTURES, Sandbox

CHART = str(FIXTURES / "chart")


def _release_secrets(sandbox: Sandbox, namespace: str, release: str) -> list[dict]:
    listing = sandbox.get("secrets", "-n", namespace, "-l", f"owner=helm,name={release}")
    return sorted(listing["items"], key=lambda s: int(s["metadata"]["labels"]["version"]))


def test_helm_install_upgrade_uninstall_with_crds(sandbox: Sandbox, namespace):
    installed = sandbox.helm("install", "g1", CHART, "-n", namespace, "--wait", "--timeout", "30s")
    assert "STATUS: deployed" in installed.stdout
    crd = sandbox.get("crd", "gadgets.demo.selfheal.io")
    assert {c["type"]: c["status"] for c in crd["status"]["conditions"]}["Established"] == "True"
    assert sandbox.get("gadget", "g1-gadget", "-n", namespace)["spec"] == {"level": 1}
    assert sandbox.get("cm", "g1-config", "-n", namespace)["data"] == {"greeting": "hello"}

    # helm keeps each revision in a Secret it finds again by label (protobuf body, label selector)
    secrets = _release_secrets(sandbox, namespace, "g1")
    assert [s["metadata"]["labels"]["status"] for s in secrets] == ["deployed"]
    release = json.loads(gzip.decompress(base64.b64decode(base64.b64decode(secrets[0]["data"]["release"]))))
    assert release["name"] == "g1" and release["version"] == 1

    sandbox.helm("upgrade", "g1", CHART, "-n", namespace, "--set", "level=7", "--set", "greeting=bye",
                 "--wait", "--timeout", "30s")
    assert sandbox.get("gadget", "g1-gadget", "-n", namespace)["spec"] == {"level": 7}
    assert sandbox.get("cm", "g1-config", "-n", namespace)["data"] == {"greeting": "bye"}
    history = sandbox.helm("history", "g1", "-n", namespace, "-o", "json")
    assert [(r["revision"], r["status"]) for r in json.loads(history.stdout)] == [(1, "superseded"), (2, "deployed")]

    sandbox.helm("rollback", "g1", "1", "-n", namespace, "--wait", "--timeout", "30s")
    assert sandbox.get("gadget", "g1-gadget", "-n", namespace)["spec"] == {"level": 1}
    assert sandbox.get("cm", "g1-config", "-n", namespace)["data"] == {"greeting": "hello"}

    # helm's client-side (3-way merge patch) mode works too
    sandbox.helm("upgrade", "g1", CHART, "-n", namespace, "--server-side=false", "--set", "level=2",
                 "--wait", "--timeout", "30s")
    assert sandbox.get("gadget", "g1-gadget", "-n", namespace)["spec"] == {"level": 2}

    rejected = sandbox.helm("upgrade", "g1", CHART, "-n", namespace, "--set", "level=-3", check=False)
    assert rejected.returncode != 0 and "spec.level" in rejected.stderr

    sandbox.helm("uninstall", "g1", "-n", namespace, "--wait", "--timeout", "30s")
    assert sandbox.kubectl("get", "gadget", "g1-gadget", "-n", namespace, check=False).returncode != 0
    assert sandbox.kubectl("get", "cm", "g1-config", "-n", namespace, check=False).returncode != 0
    assert _release_secrets(sandbox, namespace, "g1") == []
    # like a real cluster, helm leaves the CRDs from crds/ in place
    assert sandbox.get("crd", "gadgets.demo.selfheal.io")["spec"]["names"]["kind"] == "Gadget"
    assert "g1" not in sandbox.helm("list", "-n", namespace, "-q").stdout.split()
