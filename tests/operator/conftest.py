"""Fixtures for the operator's end-to-end tests: a sandbox API process, the real kubectl, the CRD,
a trained example model on disk, and the real operator process (`python -m shm_operator`).

The operator process talks to the API with its own token, so the sandbox's audit log records each of
its calls; when an `operator` fixture ends, every call it made must be allowed by the chart's RBAC
(tests/operator/rbac_audit.py): any operator test that makes a call the chart does not grant fails."""
from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest
import yaml

from examples.fraud.train import build_served
from examples.cluster import SelfhealCluster
from sandbox import tools

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sandbox"))
from sandbox_helpers import Sandbox  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from operator_process import OperatorProcess, sandbox_view  # noqa: E402


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory) -> Sandbox:
    """The local-cluster harness for the session (`python -m sandbox up --foreground`, the
    SelfHealingModel CRD Established), seen through the tests' `Sandbox` handle."""
    try:
        paths = tools.install(tmp_path_factory.mktemp("bin"))
    except tools.ToolsError as exc:
        pytest.skip(f"kubectl could not be provided: {exc}")
    with SelfhealCluster(tmp_path_factory.mktemp("cluster"), kubectl_bin=str(paths["kubectl"])).start() as cluster:
        yield sandbox_view(cluster, str(paths["helm"]))


@pytest.fixture
def namespace(sandbox: Sandbox) -> str:
    name = f"op-{uuid.uuid4().hex[:8]}"
    sandbox.kubectl("create", "namespace", name)
    yield name
    sandbox.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    """The example fraud model as a TorchServe model directory (handler + model files)."""
    return build_served(tmp_path_factory.mktemp("models") / "store", rows=16000, seed=0)


@pytest.fixture
def operator(sandbox, namespace, tmp_path):
    running = OperatorProcess(sandbox, namespace, tmp_path).start()
    yield running
    running.stop()
    # A handler that crashes is only logged by Kopf (and retried), so a test could pass over it.
    log = running.log_path.read_text(errors="replace")
    assert "Traceback" not in log, f"the operator logged a crash:\n{log[log.index('Traceback') - 500:][:4000]}"
    denied = running.calls_denied_by_chart()
    assert not denied, f"the operator made API calls the chart's RBAC does not allow: {denied[:20]}"


@pytest.fixture
def spec(tmp_path) -> dict:
    """The example SelfHealingModel's spec, defaults filled in, with a registry in tmp_path."""
    from shm_operator.status import full_spec

    example = Path(__file__).resolve().parents[2] / "examples" / "fraud" / "selfhealingmodel.yaml"
    spec = yaml.safe_load(example.read_text())["spec"]
    (tmp_path / "store").mkdir()
    spec["storage"] = {"uri": (tmp_path / "store").as_uri()}
    return full_spec(spec)
