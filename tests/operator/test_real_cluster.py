"""docs/quickstart.md on a real cluster (e.g. kind in a user's CI): its marked shell blocks, run as
written and in order, are this test. Skipped unless configured:

    SELFHEAL_E2E_QUICKSTART=1   the cluster is disposable: the quickstart installs the operator
                                cluster-wide and uses the namespaces minio, selfheal-system and fraud
    KUBECONFIG=...              that cluster, with ghcr.io/selfheal/{operator,model-server}:0.1.0
                                loaded (`make images`, then the doc's `load` block)
    or SELFHEAL_E2E_KIND=1      instead of KUBECONFIG: the doc's kind blocks too (create the cluster
                                `selfheal`, `make images`, load them; delete the cluster at the end)

`helm`, `kubectl` and `curl` must be on PATH (and `kind` for SELFHEAL_E2E_KIND). The doc's
second-terminal blocks (the port-forwards, the traffic) run as background processes and are
stopped with SIGINT (Ctrl-C) after the roll-forward. Beyond what the blocks check themselves
(`kubectl wait` for Ready, for the heal, for each rollout; `curl -f`), it asserts the prediction's
shape, that the traffic had no failed request, collapsed under drift and came back above 0.9 on
the healed adapter. Whatever fails, the `uninstall` block (and `delete-cluster`) run at the end.

Nothing here can run on the machines this project is developed on (no cluster);
tests/test_quickstart.py checks on every run that STEPS is exactly the doc's blocks, in order,
and runs the blocks that need no cluster.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time

import pytest

from quickstart_support import Shell, Step, steps

# Every marked block of docs/quickstart.md, in its order, and what this test does with it.
STEPS = {
    "env": "run",
    "python": "run",
    "cluster": "kind",
    "images": "kind",
    "load": "kind",
    "storage": "run",
    "storage-forward": "background",
    "bucket": "run",
    "train": "run",
    "upload": "run",
    "install": "run",
    "model": "run",
    "serving-forward": "background",
    "predict": "run",
    "describe": "run",
    "traffic": "background",
    "heal": "run",
    "rollback": "run",
    "rollforward": "run",
    "uninstall": "cleanup",
    "delete-cluster": "kind-cleanup",
}
KIND = os.environ.get("SELFHEAL_E2E_KIND") == "1"
TOOLS = ["helm", "kubectl", "curl"] + (["kind"] if KIND else [])
pytestmark = [
    pytest.mark.cluster, pytest.mark.timeout(3600),
    pytest.mark.skipif(os.environ.get("SELFHEAL_E2E_QUICKSTART") != "1" or not (KIND or os.environ.get("KUBECONFIG"))
                       or not all(shutil.which(t) for t in TOOLS),
                       reason="needs a disposable real cluster: set SELFHEAL_E2E_QUICKSTART=1 and KUBECONFIG "
                              "(or SELFHEAL_E2E_KIND=1), with helm, kubectl and curl on PATH"),
]


def forwarded_port(step: Step) -> int | None:
    match = re.search(r"port-forward .* (\d+):\d+\s*$", step.code.strip())
    return int(match[1]) if match else None


def wait_for_port(port: int, shell: Shell, step: Step, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if shell.background[step.name].poll() is not None:
            raise AssertionError(f"{step.name} exited:\n{shell.log(step.name)}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
            return
        except OSError:
            time.sleep(1)
    raise AssertionError(f"{step.name}: nothing listens on {port} after {timeout}s:\n{shell.log(step.name)}")


def progress(log: str) -> list[dict]:
    """The traffic's progress lines: t, requests, failed, accuracy, adapters."""
    lines = re.findall(r"requests=\s*(\d+)\s+failed=\s*(\d+)\s+accuracy=(\S+)\s+adapters=(\S+)", log)
    return [{"requests": int(r), "failed": int(f), "accuracy": None if a == "-" else float(a), "adapters": ad}
            for r, f, a, ad in lines]


def test_the_quickstart_on_a_real_cluster(tmp_path):
    doc = steps()
    assert [s.name for s in doc] == list(STEPS), "docs/quickstart.md and STEPS disagree (tests/test_quickstart.py)"
    shell = Shell(tmp_path / "quickstart")
    done: list[str] = []
    by_name = {s.name: s for s in doc}
    try:
        for step in doc:
            mode = STEPS[step.name]
            if mode in ("cleanup", "kind-cleanup") or (mode == "kind" and not KIND):
                continue
            if mode == "background":
                shell.start(step)
                if (port := forwarded_port(step)) is not None:
                    wait_for_port(port, shell, step)
            else:
                check(step.name, shell.run(step))
            done.append(step.name)
            if step.name == "rollforward":
                time.sleep(25)   # traffic on the healed adapter again, then Ctrl-C
                shell.stop_all()
        check_traffic(shell.log("traffic"))
        shell.run(by_name["uninstall"], timeout=600)
        done.append("uninstall")
    finally:
        shell.stop_all()
        if "uninstall" not in done and "storage" in done:
            try:
                shell.run(by_name["uninstall"], timeout=600)
            except AssertionError as err:
                print(f"cleanup: {err}")
        if KIND and "cluster" in done:
            shell.run(by_name["delete-cluster"], timeout=600)


def check(name: str, output: str) -> None:
    if name == "predict":
        answer = json.loads(output.strip().splitlines()[-1])
        assert answer["label"] in (["fraud"], ["legit"]) and answer["adapter_version"] == "base", answer
        assert len(answer["probabilities"][0]) == 2 and abs(sum(answer["probabilities"][0]) - 1) < 1e-4, answer
    if name == "rollback":
        history = output.strip().splitlines()[-2:]
        assert history[-1] == "base (by user)" and history[0].endswith("(by operator)"), output


def check_traffic(log: str) -> None:
    lines = progress(log)
    assert lines, log[-3000:]
    summary = json.loads(log.strip().splitlines()[-1])["summary"]
    assert summary["failed"] == 0, summary
    scored = [line for line in lines if line["accuracy"] is not None and line["requests"] >= 20]
    assert min(line["accuracy"] for line in scored) < 0.5, lines      # the drift hurt
    last = scored[-1]
    assert last["accuracy"] > 0.9 and last["adapters"] not in ("base", "-"), lines   # healed, rolled forward
