"""The real operator process for one namespace (`python -m shm_operator`), with its own audited
token: shared by the `operator` fixture and tests that start more than one operator. A module of its
own, not conftest: `from conftest import ...` finds whichever conftest was imported first.

The sandbox, the CRD and the process itself come from the one local-cluster harness
(`examples.cluster.SelfhealCluster`); `sandbox_view` gives the tests' `Sandbox` handle of it."""
from __future__ import annotations

import signal
import uuid
from pathlib import Path

import yaml

from examples.cluster import SelfhealCluster
from sandbox.cluster import Child
from sandbox.env import free_port

import rbac_audit
from sandbox_helpers import Sandbox


def sandbox_view(cluster: SelfhealCluster, helm_bin: str | None = None) -> Sandbox:
    """The tests' handle of a started harness: its URL, the API's workdir (audit log, pods), the client
    environment, kubectl and helm; `cluster` for starting operators on it."""
    return Sandbox(url=cluster.url, workdir=cluster.sandbox_dir, env=cluster.env, kubectl_bin=cluster.kubectl_bin,
                   helm_bin=helm_bin, cluster=cluster)


class OperatorProcess:
    """The real operator process for one namespace; its log is kept for failure messages."""

    def __init__(self, sandbox: Sandbox, namespace: str, workdir: Path):
        self.sandbox, self.namespace, self.workdir = sandbox, namespace, workdir
        self.log_path = workdir / f"operator-{uuid.uuid4().hex[:6]}.log"
        self.child: Child | None = None
        self.user = f"operator-{uuid.uuid4().hex[:8]}"   # its own token: its calls are audited apart
        self.kubeconfig = workdir / f"kubeconfig-{self.user}"

    def start(self, **env_overrides: str) -> "OperatorProcess":
        self.metrics_port, self.liveness_port = free_port(), free_port()
        config = yaml.safe_load(Path(self.sandbox.env["KUBECONFIG"]).read_text())
        for user in config["users"]:
            user["user"] = {"token": self.user}
        self.kubeconfig.write_text(yaml.safe_dump(config))
        # as the chart configures it: the per-model NetworkPolicy on
        policy = rbac_audit.operator_env(self.sandbox.helm_bin, self.namespace)["SELFHEAL_NETWORK_POLICY"]
        env = {"KUBECONFIG": str(self.kubeconfig), "SELFHEAL_METRICS_PORT": str(self.metrics_port),
               "SELFHEAL_NETWORK_POLICY": policy, **env_overrides}
        self.child = self.sandbox.cluster.start_operator(
            f"--liveness=http://127.0.0.1:{self.liveness_port}/healthz", "--verbose", env=env,
            namespace=self.namespace, log_path=self.log_path)
        return self

    def get(self, port: int, path: str) -> tuple[int, str]:
        import urllib.request
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.read().decode()

    def stop(self, kill: bool = False) -> None:
        if self.child:
            self.child.stop(signal.SIGKILL if kill else signal.SIGTERM, timeout=20)

    def tail(self, chars: int = 4000) -> str:
        return self.child.tail(chars) if self.child else ""

    def calls(self) -> list[dict]:
        """Every API call this operator made, from the sandbox's audit log."""
        return rbac_audit.audited_calls(self.sandbox.workdir / "audit.jsonl", self.user)

    def calls_denied_by_chart(self) -> list[dict]:
        role, cluster_role = rbac_audit.render_rbac(self.sandbox.helm_bin, self.namespace)
        return rbac_audit.denied_calls(self.calls(), self.namespace, role, cluster_role)
