"""Helpers for the sandbox tests: the running-sandbox handle and small polling/YAML utilities."""
from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parent / "fixtures"


@dataclass
class Sandbox:
    """A running sandbox API and how to reach it with the real CLIs."""
    url: str
    workdir: Path
    env: dict[str, str]
    kubectl_bin: str = "kubectl"
    helm_bin: str | None = None
    processes: list[subprocess.Popen] = field(default_factory=list)
    cluster: Any = None   # the harness that started it (sandbox.cluster.LocalCluster), where a test needs one

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 30) -> subprocess.CompletedProcess:
        return _run([self.kubectl_bin, *args], self.env, input, check, timeout)

    def helm(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        if self.helm_bin is None:
            raise RuntimeError("helm was not installed for this session")
        return _run([self.helm_bin, *args], self.env, None, check, timeout)

    def get(self, *args: str) -> dict:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)


def _run(cmd: list[str], env: dict[str, str], input: str | None, check: bool,
         timeout: float) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, env=env, input=input, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"`{' '.join(cmd)}` failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def widget_yaml(name: str, size: int = 3, **spec: object) -> str:
    extra = "".join(f"\n  {k}: {json.dumps(v)}" for k, v in spec.items())
    return (f"apiVersion: demo.selfheal.io/v1\nkind: Widget\nmetadata:\n  name: {name}\n"
            f"spec:\n  size: {size}{extra}\n")


def wait_until(predicate, timeout: float = 15.0, interval: float = 0.2, what: str = "condition"):
    """Poll `predicate` until it returns a truthy value; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")



def deployment_yaml(name: str, pod_spec: str, replicas: int = 1, strategy: str = "") -> str:
    """A Deployment of `replicas` pods labelled `app: <name>` (with `strategy`, YAML flow text, if
    given); `pod_spec` is the YAML of the pod template's spec, each line indented by 6 spaces (it
    follows `spec:` directly, so it starts with a newline)."""
    strategy_line = f"\n  strategy: {strategy}" if strategy else ""
    return f"""apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}{strategy_line}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:{pod_spec}"""


def service_yaml(name: str, port: int, target_port: str) -> str:
    """A Service `name` over the pods labelled `app: <name>`, as a second document (after `---`)."""
    return f"""
---
apiVersion: v1
kind: Service
metadata: {{name: {name}}}
spec:
  selector: {{app: {name}}}
  ports: [{{name: http, port: {port}, targetPort: {target_port}}}]
"""
