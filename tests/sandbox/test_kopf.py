"""The real Kopf CLI (`kopf run --standalone -n NS`) against the sandbox, with the fixture operator."""
from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from sandbox.server import stop_process
from sandbox_helpers import FIXTURES, Sandbox, wait_until, widget_yaml


@pytest.fixture
def operator(sandbox: Sandbox, widget_crd, namespace, tmp_path):
    """Start the fixture operator later, on demand, so the test can create objects before it runs."""
    started: list[subprocess.Popen] = []
    log_path = tmp_path / "kopf.log"

    def start() -> subprocess.Popen:
        log = open(log_path, "wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "kopf", "run", "--standalone", "-n", namespace,
             str(FIXTURES / "widget_operator.py")], env=sandbox.env, stdout=log, stderr=subprocess.STDOUT)
        started.append(process)
        return process

    yield start, log_path
    for process in started:
        stop_process(process, signal.SIGINT, timeout=15)


def _phase(sandbox: Sandbox, namespace: str, name: str) -> str:
    result = sandbox.kubectl("get", "wd", name, "-n", namespace, "-o", "jsonpath={.status.phase}", check=False)
    return result.stdout if result.returncode == 0 else ""


def test_kopf_handles_objects_created_before_and_after_it_starts(sandbox: Sandbox, namespace, operator):
    start, log_path = operator
    sandbox.kubectl("apply", "-n", namespace, "-f", "-", input=widget_yaml("early", 2))
    process = start()

    wait_until(lambda: _phase(sandbox, namespace, "early") == "Created", what="Kopf to handle the early widget",
               timeout=30)
    child = sandbox.get("cm", "early-child", "-n", namespace)
    assert child["data"] == {"size": "2"}
    early = sandbox.get("wd", "early", "-n", namespace)
    assert child["metadata"]["ownerReferences"][0]["uid"] == early["metadata"]["uid"]
    assert "demo.selfheal.io/cleanup" in early["metadata"]["finalizers"]

    sandbox.kubectl("apply", "-n", namespace, "-f", "-", input=widget_yaml("late", 5))
    wait_until(lambda: _phase(sandbox, namespace, "late") == "Created", what="Kopf to handle the late widget")

    sandbox.kubectl("patch", "wd", "late", "-n", namespace, "--type", "merge", "-p", '{"spec":{"size":8}}')
    wait_until(lambda: _phase(sandbox, namespace, "late") == "Resized", what="the update handler")
    assert sandbox.get("cm", "late-child", "-n", namespace)["data"] == {"size": "8"}

    # the delete handler runs while Kopf's finalizer holds the object; then it is gone for real
    sandbox.kubectl("delete", "wd", "late", "-n", namespace, "--timeout=20s")
    assert sandbox.get("cm", "late-farewell", "-n", namespace)["data"] == {"deleted": "late"}
    assert sandbox.kubectl("get", "wd", "late", "-n", namespace, check=False).returncode != 0
    # the owned child is garbage-collected with its owner
    wait_until(lambda: sandbox.kubectl("get", "cm", "late-child", "-n", namespace, check=False).returncode != 0,
               what="the child ConfigMap to be garbage-collected")

    assert process.poll() is None, log_path.read_text()
    log = log_path.read_text()
    assert "Traceback" not in log and "ERROR" not in log, log
