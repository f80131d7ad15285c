"""Client environment and kubeconfig for the sandbox, kept inside one work dir so nothing touches `~`.

`client_env(workdir)` is what tests and scripts pass to `subprocess.run(..., env=...)` when they run the
real `kubectl`, `helm` or `kopf` against the sandbox.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path

import yaml

KUBECONFIG_NAME = "kubeconfig"
CONTEXT_NAME = "selfheal-sandbox"


def kubeconfig_path(workdir: str | os.PathLike[str]) -> Path:
    return Path(workdir) / KUBECONFIG_NAME


def write_kubeconfig(workdir: str | os.PathLike[str], server_url: str, namespace: str = "default") -> Path:
    """Write a kubeconfig pointing at `server_url` (plain http, no credentials needed)."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": CONTEXT_NAME, "cluster": {"server": server_url}}],
        "users": [{"name": CONTEXT_NAME, "user": {"token": "sandbox"}}],
        "contexts": [{"name": CONTEXT_NAME,
                      "context": {"cluster": CONTEXT_NAME, "user": CONTEXT_NAME, "namespace": namespace}}],
        "current-context": CONTEXT_NAME,
        "preferences": {},
    }
    path = kubeconfig_path(workdir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(config, sort_keys=False))
    tmp.chmod(0o600)
    tmp.replace(path)
    return path


def client_env(workdir: str | os.PathLike[str], base: dict[str, str] | None = None) -> dict[str, str]:
    """A copy of `base` (default: os.environ) with KUBECONFIG and every kubectl/helm cache inside `workdir`."""
    root = Path(workdir).resolve()
    env = dict(os.environ if base is None else base)
    env.update({
        "KUBECONFIG": str(kubeconfig_path(root)),
        "KUBECACHEDIR": str(root / "kube-cache"),
        "HELM_CACHE_HOME": str(root / "helm" / "cache"),
        "HELM_CONFIG_HOME": str(root / "helm" / "config"),
        "HELM_DATA_HOME": str(root / "helm" / "data"),
    })
    for key in ("KUBECACHEDIR", "HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"):
        Path(env[key]).mkdir(parents=True, exist_ok=True)
    return env


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for an operator's metrics, a sandbox API, ...)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
