"""Starting a heal: the version a heal Job makes is chosen once, when the Job is created, and the
status names that version whatever happens after.

The chaos benchmark caught `jobs-heal-3` writing and reporting candidate v6 while
`status.lastHeal.version` said v7: the pass that created the Job stopped before its status write
landed, and the next pass found the Job (correctly, no duplicate) but chose the version again from
the registry, which by then held the Job's own v6. Real `maybe_heal` passes, a real file://
registry, and a dict of Jobs in place of the API server."""
from __future__ import annotations

import asyncio
import copy
import datetime as dt

import kopf
import numpy as np
import pytest
from safetensors.numpy import save as save_tensors

from model_handler.registry import AdapterRegistry
from shm_operator import decisions, healing, k8s
from shm_operator.context import ModelPass
from shm_operator.status import iso, written_status

T = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.timezone.utc)
BODY = {"apiVersion": "selfheal.io/v1alpha1", "kind": "SelfHealingModel",
        "metadata": {"name": "jobs", "namespace": "ns", "uid": "u-1"}}


class Jobs:
    """The Job calls of shm_operator.k8s over a dict, with the API server's create semantics (a name
    is created once; the stored object never changes). `ensure` is the old create-or-patch, kept so
    the test runs against the code before the fix too."""

    def __init__(self):
        self.stored: dict[str, dict] = {}
        self.creates = 0
        self.config_maps: dict[str, dict] = {}   # the heal Jobs' configs (k8s.create)

    async def read(self, kind, namespace, name):
        assert kind == "Job"
        return copy.deepcopy(self.stored.get(name))

    async def create_or_read(self, obj, namespace):
        name = obj["metadata"]["name"]
        if name not in self.stored:
            self.creates += 1
            self.stored[name] = copy.deepcopy(obj)
            self.stored[name]["metadata"].setdefault("uid", f"uid-{name}")
        return copy.deepcopy(self.stored[name])

    async def create(self, obj, namespace):
        assert obj["kind"] == "ConfigMap"
        if obj["metadata"]["name"] in self.config_maps:
            return False
        self.config_maps[obj["metadata"]["name"]] = copy.deepcopy(obj)
        return True

    async def ensure(self, obj, namespace):
        await self.create_or_read(obj, namespace)


@pytest.fixture
def jobs(monkeypatch) -> Jobs:
    fake = Jobs()
    for call in ("read", "create_or_read", "ensure", "create"):
        monkeypatch.setattr(k8s, call, getattr(fake, call), raising=False)
    for poster in ("info", "warn"):
        monkeypatch.setattr(kopf, poster, lambda *args, **kwargs: None)
    return fake


def commit(registry: AdapterRegistry, version: str) -> None:
    """What a heal Job does at its end: commit its candidate."""
    data = save_tensors({"bias": np.arange(2, dtype=np.float32) + len(registry.versions())})
    registry.put(version, data, {"base_model_hash": "b" * 64, "rules_hash": "r" * 64})


def drifting() -> dict:
    return {"adapter": {"desired": "v5", "lastGood": "v5", "current": "v5", "podsAtDesired": 2, "podsTotal": 2},
            "drift": {"trigger": {"consecutive": 2, "drifting": True}, "onset": iso(T - dt.timedelta(minutes=2))},
            "healCount": 2, "phase": "Drifting"}


def heal_pass(spec: dict, status: dict) -> dict:
    """One maybe_heal pass from `status`; returns the status its patch leaves."""
    patch = kopf.Patch()
    asyncio.run(healing.maybe_heal(ModelPass.of("jobs", "ns", spec, copy.deepcopy(status), body=BODY, patch=patch, t=T)))
    return written_status(patch, {"status": copy.deepcopy(status)})


def test_a_pass_that_finds_its_job_names_the_jobs_version_not_a_new_one(spec, jobs):
    registry = AdapterRegistry(spec["storage"]["uri"], "ns", "jobs")
    for version in ("v1", "v2", "v3", "v4", "v5"):
        commit(registry, version)
    before = drifting()
    first = heal_pass(spec, before)
    assert first["lastHeal"]["job"] == "jobs-heal-3" and first["lastHeal"]["version"] == "v6"
    assert decisions.heal_job_target(jobs.stored["jobs-heal-3"]) == ("v5", "v6")
    (config_map,) = jobs.config_maps.values()   # the Job's config, owned by the Job
    assert config_map["metadata"]["ownerReferences"][0]["uid"] == jobs.stored["jobs-heal-3"]["metadata"]["uid"]

    # the operator restarts before that status lands; the Job runs and commits its candidate
    commit(registry, "v6")
    again = heal_pass(spec, before)
    assert jobs.creates == 1 and set(jobs.stored) == {"jobs-heal-3"}
    assert again["lastHeal"]["job"] == "jobs-heal-3"
    assert again["lastHeal"]["version"] == "v6", "the status must name the adapter the Job makes"
    assert again["lastHeal"]["parent"] == "v5"
    assert decisions.heal_job_target(jobs.stored["jobs-heal-3"]) == ("v5", "v6")


def test_a_job_of_another_kind_under_the_heal_name_is_skipped_not_adopted(spec, jobs):
    jobs.stored["jobs-heal-3"] = {"kind": "Job", "metadata": {"name": "jobs-heal-3", "labels": {}},
                                  "spec": {"template": {"spec": {"containers": [{"name": "x", "args": []}]}}}}
    status = heal_pass(spec, drifting())
    assert status["healCount"] == 3 and "lastHeal" not in status   # the next pass tries jobs-heal-4
    assert jobs.creates == 0
    assert heal_pass(spec, status)["lastHeal"]["job"] == "jobs-heal-4"
