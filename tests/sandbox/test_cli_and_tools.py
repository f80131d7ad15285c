"""`python -m sandbox up|down|status`, `python -m sandbox.tools install` and `client_env`, as processes."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from sandbox import env as sandbox_env
from sandbox import server as sandbox_server
from sandbox_helpers import REPO_ROOT


def _sandbox_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sandbox", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=60)


def test_up_prints_kubeconfig_export_and_down_stops_it(tmp_path, tool_paths):
    workdir = tmp_path / "box"
    up = _sandbox_cli("up", "--workdir", str(workdir))
    assert up.returncode == 0, up.stderr
    kubeconfig = workdir / "kubeconfig"
    assert up.stdout.strip() == f"export KUBECONFIG={kubeconfig}"
    state = sandbox_server.read_state(workdir)
    try:
        env = sandbox_env.client_env(workdir)
        namespaces = subprocess.run([str(tool_paths["kubectl"]), "get", "ns", "-o", "name"], env=env,
                                    capture_output=True, text=True, timeout=30)
        assert "namespace/default" in namespaces.stdout.split(), namespaces.stderr
        again = _sandbox_cli("up", "--workdir", str(workdir))
        assert again.returncode == 1 and "already runs" in again.stderr
        assert _sandbox_cli("status", "--workdir", str(workdir)).returncode == 0
    finally:
        down = _sandbox_cli("down", "--workdir", str(workdir))
    assert down.returncode == 0 and f"pid {state['pid']}" in down.stderr
    assert not sandbox_server.state_path(workdir).exists()
    try:
        os.kill(state["pid"], 0)
        raise AssertionError(f"the sandbox process {state['pid']} still runs after `down`")
    except ProcessLookupError:
        pass
    assert _sandbox_cli("status", "--workdir", str(workdir)).returncode == 1
    assert "no sandbox runs" in _sandbox_cli("down", "--workdir", str(workdir)).stderr


def test_client_env_keeps_every_client_path_inside_the_workdir(tmp_path):
    env = sandbox_env.client_env(tmp_path, base={"PATH": "/usr/bin", "HOME": "/nonexistent-home"})
    for key in ("KUBECONFIG", "KUBECACHEDIR", "HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"):
        assert Path(env[key]).is_relative_to(tmp_path.resolve()), key
    assert env["PATH"] == "/usr/bin" and env["HOME"] == "/nonexistent-home"


def test_tools_install_is_idempotent_and_the_binaries_run(tmp_path, tool_paths):
    dest = tmp_path / "bin"
    first = subprocess.run([sys.executable, "-m", "sandbox.tools", "install", "--dest", str(dest)],
                           cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    helm = dest / "helm"
    assert f"helm: {helm}" in first.stdout.splitlines()
    stamp = helm.stat().st_mtime_ns
    second = subprocess.run([sys.executable, "-m", "sandbox.tools", "install", "--dest", str(dest)],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0 and helm.stat().st_mtime_ns == stamp  # cached: not rewritten
    version = subprocess.run([str(helm), "version", "--short"], capture_output=True, text=True, timeout=30)
    assert version.stdout.startswith("v4."), version


def test_persisted_state_survives_an_api_restart(tmp_path, tool_paths):
    from sandbox_helpers import FIXTURES, widget_yaml

    workdir = tmp_path / "box"
    env = sandbox_env.client_env(workdir)

    def kubectl(*args: str, input: str | None = None) -> str:
        result = subprocess.run([str(tool_paths["kubectl"]), *args], env=env, input=input, capture_output=True,
                                text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        return result.stdout

    assert _sandbox_cli("up", "--persist", "--workdir", str(workdir)).returncode == 0
    try:
        kubectl("apply", "-f", str(FIXTURES / "widget-crd.yaml"))
        kubectl("apply", "-f", "-", input=widget_yaml("kept", 4))
        before = kubectl("get", "wd", "kept", "-o", "jsonpath={.metadata.uid} {.metadata.resourceVersion}").split()
    finally:
        assert _sandbox_cli("down", "--workdir", str(workdir)).returncode == 0
    assert (workdir / "state.json").exists()
    assert _sandbox_cli("up", "--persist", "--workdir", str(workdir)).returncode == 0
    try:
        after = kubectl("get", "widgets", "kept", "-o", "jsonpath={.metadata.uid} {.metadata.resourceVersion}")
        assert after.split() == before
        kubectl("patch", "wd", "kept", "--type", "merge", "-p", '{"spec":{"size":5}}')
        rv = kubectl("get", "wd", "kept", "-o", "jsonpath={.metadata.resourceVersion}")
        assert int(rv) > int(before[1])  # the counter continues, so clients never see an RV go back
    finally:
        _sandbox_cli("down", "--workdir", str(workdir))
