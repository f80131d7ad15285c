"""The chaos benchmark's groups as tests: every fault ends in a clear status and Event with the last
good adapter serving, and the request loop loses nothing, except the requests that were inside a
TorchServe worker or pod at the moment it was killed (bounded by the number of clients).

One sandbox (API and node as separate processes), one operator and one trained model serve all
groups; each group deploys its own SelfHealingModel (see bench/chaos.py for what each case does).
"""
from __future__ import annotations

import pytest

from bench import chaos

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
CLIENTS = 2   # LoadLoop's default: at most this many requests are in flight at any moment


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    running = chaos.Rig(tmp_path_factory.mktemp("chaos")).start()
    yield running
    running.stop()


def run_group(rig, group: str) -> dict[str, chaos.Case]:
    cases = {}
    for case in chaos.GROUPS[group](rig):
        print(f"{case.name}: {case.requests} requests, {case.failed} failed, recovered {case.recovered}; {case.detail}")
        cases[case.name] = case
    return cases


def assert_recovered(cases: dict[str, chaos.Case], may_lose_in_flight: tuple[str, ...] = ()) -> None:
    for name, case in cases.items():
        if case.skipped:
            continue
        assert case.recovered, f"{name}: {case.detail}"
        limit = CLIENTS if name in may_lose_in_flight else 0
        assert case.failed <= limit, f"{name}: {case.failed} of {case.requests} requests failed: {case.detail}"
        assert case.requests > 0, f"{name}: no traffic measured"


def assert_group_recovers(rig, group: str, n_cases: int, may_lose_in_flight: tuple[str, ...] = ()) -> None:
    """Run one chaos group: it yields `n_cases` cases and recovers from each (see assert_recovered)."""
    cases = run_group(rig, group)
    assert len(cases) == n_cases
    assert_recovered(cases, may_lose_in_flight)


def test_load_through_heal_rollouts_and_rollbacks(rig):
    assert_group_recovers(rig, "load", 4)


def test_pod_faults(rig):
    assert_group_recovers(rig, "pods", 3, may_lose_in_flight=("pods: kill -9 a TorchServe worker during a HotSwap",
                                                              "pods: kill -9 a whole pod during a HotSwap"))


def test_operator_and_api_restarts(rig):
    assert_group_recovers(rig, "operator", 3)


def test_job_and_registry_faults(rig):
    assert_group_recovers(rig, "jobs", 7)


def test_storage_faults(rig):
    assert_group_recovers(rig, "storage", 3)


@pytest.mark.timeout(30)
def test_the_candidate_cutter_cuts_committed_versions_only(tmp_path):
    """The registry stages a version in `.v6.tmp-...` and renames it into place: only the renamed
    version is a commit to damage (cutting the staging copy made the case above fail by timing)."""
    import time
    adapters = tmp_path / "adapters"
    adapters.mkdir()
    staged = adapters / ".v6.tmp-0123abcd"
    with chaos.CandidateCutter(adapters) as cutter:
        staged.mkdir()   # a writer stages its files, meta.json last, while the cutter watches
        (staged / "adapter.safetensors").write_bytes(b"x" * 100)
        (staged / "meta.json").write_text("{}")
        time.sleep(0.1)
        assert cutter.cut == [] and len((staged / "adapter.safetensors").read_bytes()) == 100
        staged.rename(adapters / "v6")
        deadline = time.monotonic() + 5
        while not cutter.cut and time.monotonic() < deadline:
            time.sleep(0.01)
    assert cutter.cut == ["v6"] and len((adapters / "v6" / "adapter.safetensors").read_bytes()) == 40
