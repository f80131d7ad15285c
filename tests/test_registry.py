"""Adapter registry on real files: layout, atomic commit order, hash checks and storage failures."""
from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
import textwrap
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import fsspec
import numpy as np
import pytest
from safetensors.numpy import save as save_tensors

from model_handler.registry import (AdapterExistsError, AdapterMeta, AdapterNotFoundError,
                                    AdapterRegistry, CorruptAdapterError, IncompleteAdapterError,
                                    RegistryError, next_version, version_number)

REPO_ROOT = Path(__file__).resolve().parents[1]


def adapter_bytes(seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    return save_tensors({"adapter.bias": rng.normal(size=4).astype(np.float32),
                         "adapter.shift": rng.normal(size=6).astype(np.float32)})


def meta(**overrides) -> dict:
    base = {"base_model_hash": "b" * 64, "rules_hash": "r" * 64, "creator": "fraud-heal-1",
            "training_window": {"start": "2026-11-22T10:00:00Z", "end": "2026-11-22T11:00:00Z",
                                "rows": 5000}}
    return {**base, **overrides}


@pytest.fixture
def registry(tmp_path) -> AdapterRegistry:
    return AdapterRegistry(f"file://{tmp_path}", "default", "fraud")


def version_dir(tmp_path: Path, version: str) -> Path:
    return tmp_path / "default" / "fraud" / "adapters" / version


def test_round_trip_writes_the_documented_layout(registry, tmp_path):
    data = adapter_bytes()
    stored = registry.put("v1", data, meta(labels_used=0, gate={"passed": True, "agreement": 0.93}))

    directory = version_dir(tmp_path, "v1")
    assert sorted(p.name for p in directory.iterdir()) == ["adapter.safetensors", "meta.json"]
    assert (directory / "adapter.safetensors").read_bytes() == data
    on_disk = json.loads((directory / "meta.json").read_text())
    assert on_disk["sha256"] == hashlib.sha256(data).hexdigest()
    assert on_disk["version"] == "v1" and on_disk["state"] == "candidate" and on_disk["parent"] is None
    assert on_disk["created"].endswith("Z")

    read, read_meta = registry.get("v1")
    assert read == data
    assert read_meta == stored
    assert read_meta.training_window.rows == 5000
    assert read_meta.gate == {"passed": True, "agreement": 0.93}
    assert read_meta.created.tzinfo is not None
    assert abs((datetime.now(timezone.utc) - read_meta.created).total_seconds()) < 60


def test_plain_path_and_file_uri_name_the_same_storage(tmp_path):
    AdapterRegistry(str(tmp_path), "default", "fraud").put("v1", adapter_bytes(), meta())
    data, _ = AdapterRegistry(f"file://{tmp_path}", "default", "fraud").get("v1")
    assert data == adapter_bytes()


def test_memory_uri_works():
    uri = f"memory://registry-{uuid.uuid4().hex}"
    try:
        registry = AdapterRegistry(uri, "default", "fraud")
        registry.put("v1", adapter_bytes(1), meta())
        registry.put("v2", adapter_bytes(2), meta(parent="v1"))
        assert registry.versions() == ["v1", "v2"]
        assert registry.get("v2")[0] == adapter_bytes(2)
        assert registry.lineage("v2") == ["v2", "v1", "base"]
    finally:
        fs, root = fsspec.core.url_to_fs(uri)
        fs.rm(root, recursive=True)


def test_existing_version_is_never_overwritten(registry):
    registry.put("v1", adapter_bytes(1), meta())
    with pytest.raises(AdapterExistsError, match=r"adapter v1 already exists.*next free: v2"):
        registry.put("v1", adapter_bytes(2), meta())
    assert registry.get("v1")[0] == adapter_bytes(1)


@pytest.mark.parametrize("name, problem", [
    ("base", "reserved"), ("V1", "must match"), ("-v1", "must match"), ("v1/../v2", "must match"),
    ("a" * 64, "must match"), ("", "must match"), ("v 1", "must match"),
])
def test_reserved_and_unfriendly_version_names_are_refused(registry, name, problem):
    with pytest.raises(ValueError, match=problem):
        registry.put(name, adapter_bytes(), meta())
    assert registry.versions() == []


def test_longest_label_friendly_name_is_accepted(registry):
    name = "v" + "1" * 62
    registry.put(name, adapter_bytes(), meta())
    assert registry.versions() == [name]


def test_data_without_meta_is_an_incomplete_write(registry, tmp_path):
    registry.put("v1", adapter_bytes(1), meta())
    # What a writer that crashed between the two steps of put() leaves behind.
    crashed = version_dir(tmp_path, "v2")
    crashed.mkdir()
    (crashed / "adapter.safetensors").write_bytes(adapter_bytes(2))

    assert registry.versions() == ["v1"]
    assert registry.next_version() == "v2"
    with pytest.raises(IncompleteAdapterError, match="adapter v2 .* is incomplete"):
        registry.get("v2")
    # A retry of the same Job commits the version over the uncommitted leftover.
    registry.put("v2", adapter_bytes(3), meta(parent="v1"))
    assert registry.get("v2")[0] == adapter_bytes(3)
    assert registry.versions() == ["v1", "v2"]


@pytest.mark.parametrize("crashed_before", [False, True])
def test_racing_writers_of_one_version_never_mix_their_files(registry, tmp_path, crashed_before):
    if crashed_before:  # the race is also safe when the writers all replace a crashed write
        version_dir(tmp_path, "v1").mkdir(parents=True)
        (version_dir(tmp_path, "v1") / "adapter.safetensors").write_bytes(b"half a write")
    def attempt(seed: int) -> int | None:
        try:
            registry.put("v1", adapter_bytes(seed), meta(creator=f"writer-{seed}"))
            return seed
        except AdapterExistsError:
            return None

    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(attempt, range(16)))
    winners = [seed for seed in outcomes if seed is not None]
    assert len(winners) == 1
    data, record = registry.get("v1")  # hash verified: data and meta.json come from one writer
    assert data == adapter_bytes(winners[0]) and record.creator == f"writer-{winners[0]}"
    left = sorted(p.name for p in version_dir(tmp_path, "v1").parent.iterdir())
    assert left == [".commit.lock", "v1"]  # no staging directory left behind


def test_incomplete_write_on_an_object_store_is_replaced_by_a_retry():
    uri = f"memory://registry-{uuid.uuid4().hex}"
    fs, root = fsspec.core.url_to_fs(uri)
    try:
        fs.pipe_file(f"{root}/default/fraud/adapters/v1/adapter.safetensors", b"half a write")
        registry = AdapterRegistry(uri, "default", "fraud")
        assert registry.versions() == []
        with pytest.raises(IncompleteAdapterError):
            registry.meta("v1")
        registry.put("v1", adapter_bytes(), meta())
        assert registry.get("v1")[0] == adapter_bytes()
    finally:
        fs.rm(root, recursive=True)


def test_leftover_temporary_files_are_ignored(registry, tmp_path):
    registry.put("v1", adapter_bytes(), meta())
    (version_dir(tmp_path, "v1") / ".meta.json.tmp-deadbeef").write_text("{}")
    stray = version_dir(tmp_path, "v2")
    stray.mkdir()
    (stray / ".meta.json.tmp-deadbeef").write_text("{}")
    assert registry.versions() == ["v1"]


def test_flipped_byte_is_caught_by_the_hash(registry, tmp_path):
    data = adapter_bytes()
    registry.put("v1", data, meta())
    path = version_dir(tmp_path, "v1") / "adapter.safetensors"
    damaged = bytearray(path.read_bytes())
    damaged[len(damaged) // 2] ^= 0x01
    path.write_bytes(bytes(damaged))

    expected, actual = hashlib.sha256(data).hexdigest(), hashlib.sha256(damaged).hexdigest()
    with pytest.raises(CorruptAdapterError) as caught:
        registry.get("v1")
    message = str(caught.value)
    assert "v1" in message and expected in message and actual in message


def test_committed_meta_without_data_is_corrupt(registry, tmp_path):
    registry.put("v1", adapter_bytes(), meta())
    (version_dir(tmp_path, "v1") / "adapter.safetensors").unlink()
    with pytest.raises(CorruptAdapterError, match="adapter.safetensors is missing"):
        registry.get("v1")


def test_missing_version_lists_the_known_ones(registry):
    with pytest.raises(AdapterNotFoundError, match="known versions: none"):
        registry.get("v1")
    registry.put("v1", adapter_bytes(1), meta())
    registry.put("v2", adapter_bytes(2), meta())
    with pytest.raises(AdapterNotFoundError, match="adapter v7 not found .*known versions: v1, v2"):
        registry.get("v7")


def test_base_is_built_in_not_stored(registry):
    with pytest.raises(AdapterNotFoundError, match="identity adapter"):
        registry.get("base")


@pytest.mark.parametrize("content, reason", [
    ("{not json", "meta.json is corrupt.*(JSON|json)"),
    (None, "meta.json is corrupt.*state"),  # valid JSON, unknown state
    ("[]", "meta.json is corrupt"),
])
def test_corrupt_meta_json_is_reported_with_the_reason(registry, tmp_path, content, reason):
    registry.put("v1", adapter_bytes(), meta())
    path = version_dir(tmp_path, "v1") / "meta.json"
    if content is None:
        record = json.loads(path.read_text())
        record["state"] = "deployed"
        content = json.dumps(record)
    path.write_text(content)
    with pytest.raises(CorruptAdapterError, match=reason):
        registry.get("v1")
    assert registry.versions() == ["v1"]  # still committed; reading it says what is wrong


def test_meta_naming_another_version_is_corrupt(registry, tmp_path):
    registry.put("v1", adapter_bytes(), meta())
    path = version_dir(tmp_path, "v1") / "meta.json"
    path.write_text(path.read_text().replace('"version": "v1"', '"version": "v9"'))
    with pytest.raises(CorruptAdapterError, match="names version 'v9'"):
        registry.meta("v1")


def test_versions_sort_naturally_and_next_version_follows_the_largest(registry):
    assert registry.versions() == [] and registry.next_version() == "v1"
    for name in ["v2", "v10", "v1", "hotfix-a", "v9"]:
        registry.put(name, adapter_bytes(), meta())
    assert registry.versions() == ["hotfix-a", "v1", "v2", "v9", "v10"]
    assert registry.next_version() == "v11"


@pytest.mark.parametrize("existing, expected", [
    ([], "v1"), (["base"], "v1"), (["v1", "v2"], "v3"),
    (["v9", "v10", "v2"], "v11"),                 # natural order, not "v9" > "v10"
    (["v1", "v3"], "v4"),                         # a deleted v2 is never reused
    (["v2-hotfix", "v01", "V3", "v0"], "v1"),     # only v<n> names count
])
def test_next_version(existing, expected):
    assert next_version(existing) == expected
    assert expected not in existing


def test_version_number():
    assert (version_number("v12"), version_number("base"), version_number("v1.2")) == (12, None, None)


def test_the_registry_names_versions_by_the_one_rule(registry):
    """The operator names a heal's version with next_version, the registry its next free name:
    one rule (the registry once counted v01 as 1 and the operator did not)."""
    for name in ["v01", "v0", "v3-hotfix"]:
        registry.put(name, adapter_bytes(), meta())
    assert registry.next_version() == next_version(registry.versions()) == "v1"


def test_set_state_rewrites_only_meta(registry, tmp_path):
    data = adapter_bytes()
    registry.put("v1", data, meta())
    updated = registry.set_state("v1", "promoted", reason="gate passed: agreement 0.93")
    assert updated.state == "promoted"
    read, read_meta = registry.get("v1")
    assert read == data
    assert (read_meta.state, read_meta.reason) == ("promoted", "gate passed: agreement 0.93")
    assert read_meta.sha256 == hashlib.sha256(data).hexdigest()
    assert sorted(p.name for p in version_dir(tmp_path, "v1").iterdir()) == \
        ["adapter.safetensors", "meta.json"]
    assert registry.set_state("v1", "rolled-back", reason="harm after rollout").state == "rolled-back"


def test_unknown_states_are_refused(registry):
    registry.put("v1", adapter_bytes(), meta())
    with pytest.raises(ValueError, match="unknown adapter state 'live'.*candidate, promoted, "
                                         "rejected, rolled-back"):
        registry.set_state("v1", "live")
    with pytest.raises(ValueError, match="unknown adapter state 'good'"):
        registry.put("v2", adapter_bytes(), meta(state="good"))
    assert registry.meta("v1").state == "candidate"


def test_set_state_of_a_missing_version(registry):
    with pytest.raises(AdapterNotFoundError, match="adapter v3 not found"):
        registry.set_state("v3", "rejected")


def test_lineage_follows_parents_back_to_base(registry):
    registry.put("v1", adapter_bytes(1), meta(parent="base"))
    registry.put("v2", adapter_bytes(2), meta(parent="v1"))
    registry.put("v3", adapter_bytes(3), meta(parent="v2"))
    registry.put("v4", adapter_bytes(4), meta(parent="v1"))
    assert registry.meta("v1").parent is None
    assert registry.lineage("v3") == ["v3", "v2", "v1", "base"]
    assert registry.lineage("v4") == ["v4", "v1", "base"]
    assert registry.lineage("v1") == ["v1", "base"]


def test_parent_must_exist(registry):
    with pytest.raises(AdapterNotFoundError, match="adapter v5 not found"):
        registry.put("v6", adapter_bytes(), meta(parent="v5"))
    assert registry.versions() == []


def test_lineage_loop_in_damaged_metas_is_reported(registry, tmp_path):
    registry.put("v1", adapter_bytes(1), meta())
    registry.put("v2", adapter_bytes(2), meta(parent="v1"))
    path = version_dir(tmp_path, "v1") / "meta.json"
    record = json.loads(path.read_text())
    record["parent"] = "v2"
    path.write_text(json.dumps(record))
    with pytest.raises(CorruptAdapterError, match="lineage of v2 loops: v2 -> v1 -> v2"):
        registry.lineage("v2")


@pytest.mark.parametrize("bad, problem", [
    ({"colour": "red"}, r"unknown meta keys \['colour'\]"),
    ({"sha256": "0" * 64}, "sha256 .* does not match"),
    ({"version": "v2"}, "version 'v2' does not match"),
    ({"parent": "v1"}, "cannot be its own parent"),
    ({"base_model_hash": ""}, "base_model_hash"),
    ({"labels_used": -1}, "labels_used"),
    ({"training_window": {"start": "2026-11-22T12:00:00Z", "end": "2026-11-22T11:00:00Z"}},
     "starts .* after it ends"),
    ({"training_window": {"start": "2026-11-22T12:00:00"}}, "timezone"),
    ({"training_window": {"rows": 10, "row": 3}}, r"unknown training_window keys \['row'\]"),
    ({"created": "yesterday"}, "created"),
])
def test_bad_meta_is_refused_with_the_problem_named(registry, bad, problem):
    with pytest.raises(ValueError, match=problem):
        registry.put("v1", adapter_bytes(), meta(**bad))
    assert registry.versions() == []


def test_meta_round_trips_through_json():
    record = AdapterMeta(**meta(version="v3", sha256="a" * 64, parent="v2",
                                created="2026-11-22T12:00:00+02:00"))
    assert record.created == datetime(2026, 11, 22, 10, tzinfo=timezone.utc)
    assert AdapterMeta.model_validate_json(record.to_json()) == record


@pytest.mark.parametrize("namespace, model", [("Default", "fraud"), ("default", "../fraud"),
                                              ("default", "a/b"), ("", "fraud")])
def test_namespace_and_model_must_be_kubernetes_names(tmp_path, namespace, model):
    with pytest.raises(ValueError, match="is not a Kubernetes name"):
        AdapterRegistry(str(tmp_path), namespace, model)


# --- storage failures: always RegistryError naming the URI and the operation, never a bare OSError


def registry_error(call: Callable[[], object], uri: str, operation: str) -> RegistryError:
    """The RegistryError that `call` raises, checked to name `uri` and `operation` (and not to be an
    OSError, so callers cannot catch it as one by accident)."""
    with pytest.raises(RegistryError) as caught:
        call()
    assert isinstance(caught.value, RegistryError)
    assert not isinstance(caught.value, OSError)
    assert uri in str(caught.value) and operation in str(caught.value)
    assert caught.value.uri == uri
    return caught.value


def test_nonexistent_storage_root(tmp_path):
    uri = f"file://{tmp_path}/not-mounted"
    registry = AdapterRegistry(uri, "default", "fraud")
    error = registry_error(lambda: registry.versions(), uri, "list versions")
    assert "does not exist" in str(error)
    registry_error(lambda: registry.put("v1", adapter_bytes(), meta()), uri, "put v1")
    registry_error(lambda: registry.get("v1"), uri, "list versions")
    assert not (tmp_path / "not-mounted").exists()


def test_path_through_a_regular_file(tmp_path):
    (tmp_path / "default").write_text("a file where the namespace directory should be")
    uri = f"file://{tmp_path}"
    registry = AdapterRegistry(uri, "default", "fraud")
    error = registry_error(lambda: registry.put("v1", adapter_bytes(), meta()), uri, "put v1")
    assert isinstance(error.__cause__, OSError)
    error = registry_error(lambda: registry.versions(), uri, "list versions")
    assert "Not a directory" in str(error)


def test_unreachable_remote_storage():
    pytest.importorskip("aiohttp", reason="fsspec's http backend needs aiohttp")
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    uri = f"http://127.0.0.1:{port}/registry"
    registry = AdapterRegistry(uri, "default", "fraud")
    error = registry_error(lambda: registry.versions(), uri, "list versions")
    assert "Cannot connect" in str(error)
    registry_error(lambda: registry.get("v1"), uri, "read v1")
    # http storage cannot be written at all
    registry_error(lambda: registry.put("v1", adapter_bytes(), meta()), uri, "put v1")


def directory_permissions_are_enforced(tmp_path: Path) -> bool:
    """False when running with CAP_DAC_OVERRIDE (e.g. as root), where chmod does not stop writes."""
    probe = tmp_path / "probe"
    probe.mkdir(mode=0o555)
    try:
        (probe / "file").touch()
    except PermissionError:
        return True
    finally:
        probe.chmod(0o755)
    return False


def test_read_only_directory(tmp_path):
    if not directory_permissions_are_enforced(tmp_path):
        pytest.skip("this process ignores directory permissions (root); see the regular-file test")
    registry = AdapterRegistry(str(tmp_path), "default", "fraud")
    registry.put("v1", adapter_bytes(), meta())
    adapters = tmp_path / "default" / "fraud" / "adapters"
    adapters.chmod(0o555)
    try:
        error = registry_error(lambda: registry.put("v2", adapter_bytes(), meta()), str(tmp_path), "put v2")
        assert "Permission denied" in str(error)
        adapters.chmod(0o000)  # unreadable: listing must fail loudly, not look empty
        error = registry_error(lambda: registry.versions(), str(tmp_path), "list versions")
        assert "Permission denied" in str(error)
    finally:
        adapters.chmod(0o755)


def test_full_disk_leaves_nothing_committed(tmp_path):
    """A real write failure: the file-size limit makes the kernel refuse the write (EFBIG)."""
    uri = f"file://{tmp_path}"
    script = textwrap.dedent(f"""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get the error, not the signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        from model_handler.registry import AdapterRegistry, RegistryError
        registry = AdapterRegistry({uri!r}, "default", "fraud")
        try:
            registry.put("v1", b"x" * 1_000_000, {{"base_model_hash": "b", "rules_hash": "r"}})
        except RegistryError as exc:
            print("RegistryError:", exc)
            sys.exit(0)
        sys.exit(3)
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"RegistryError: storage {uri} (default/fraud): put v1 failed" in result.stdout
    assert "File too large" in result.stdout
    registry = AdapterRegistry(uri, "default", "fraud")
    assert registry.versions() == []
    adapters = tmp_path / "default" / "fraud" / "adapters"
    assert list(adapters.iterdir()) == []  # the partly written staging directory was removed


def test_unknown_protocol_is_a_registry_error():
    with pytest.raises(RegistryError, match="nosuchproto://bucket/x.*cannot open"):
        AdapterRegistry("nosuchproto://bucket/x", "default", "fraud")
