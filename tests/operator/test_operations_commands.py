"""The commands docs/operations.md gives, run as written against the sandbox: the CRD upgrade, and a
model whose deletion hangs on `selfheal.io/finalizer` once the operator is gone, freed by the
documented patch. (A spec the operator refuses keeps pods out of it: the finalizer is the same.)"""
from __future__ import annotations

import json
import re
import shlex
import time

import yaml

from sandbox_helpers import REPO_ROOT, wait_until
from test_reconcile import example_cr

DOC = REPO_ROOT / "docs" / "operations.md"


def doc_commands(section: str) -> list[str]:
    """The `kubectl ...` lines of the bash blocks under a heading of docs/operations.md."""
    text = DOC.read_text().split(f"\n{section}\n", 1)[1]
    text = re.split(r"\n#{2,3} ", text, maxsplit=1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    return [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()
            if line.startswith("kubectl ")]


def kubectl(sandbox, command: str, **names: str):
    for key, value in names.items():
        command = command.replace(key, value)
    return sandbox.kubectl(*shlex.split(command)[1:])


def test_the_documented_crd_upgrade_applies_over_the_installed_crd(sandbox):
    commands = doc_commands("### The CRD first: helm never upgrades `crds/`")
    assert commands[0].startswith("kubectl apply --server-side --force-conflicts -f charts/selfheal/crds/")
    for command in commands:
        kubectl(sandbox, command.replace("charts/selfheal", str(REPO_ROOT / "charts" / "selfheal")))
    crd = sandbox.get("crd", "selfhealingmodels.selfheal.io")
    expected = yaml.safe_load((REPO_ROOT / "charts" / "selfheal" / "crds" / "selfhealingmodels.yaml").read_text())
    assert crd["spec"]["versions"][0]["schema"] == expected["spec"]["versions"][0]["schema"]


def test_a_model_deleted_without_the_operator_hangs_until_the_documented_patch(
        sandbox, namespace, operator, tmp_path):
    body = yaml.safe_load(example_cr(tmp_path / "model", tmp_path,
                                     rules=[{"name": "broken", "when": "amount >", "label": "fraud"}]))
    sandbox.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(body))
    wait_until(lambda: "selfheal.io/finalizer" in (sandbox.get("shm", "fraud", "-n", namespace)["metadata"]
                                                   .get("finalizers") or []), timeout=60, what="the finalizer")
    operator.stop()   # as `helm uninstall` does
    sandbox.kubectl("delete", "shm", "fraud", "-n", namespace, "--wait=false")
    time.sleep(2)
    stuck = sandbox.get("shm", "fraud", "-n", namespace)
    assert stuck["metadata"]["deletionTimestamp"] and stuck["metadata"]["finalizers"] == ["selfheal.io/finalizer"]

    listing, patch = doc_commands("### A model stuck in deletion")[:2]
    assert f"{namespace}/fraud" in kubectl(sandbox, listing).stdout.split()
    kubectl(sandbox, patch, NAME="fraud", NS=namespace)
    wait_until(lambda: not json.loads(sandbox.kubectl("get", "shm", "-n", namespace, "-o", "json").stdout)["items"],
               timeout=15, what="the model to be gone")
