"""Traffic store and sampler on real files: shard naming, retention, damaged shards, never blocking."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from concurrent.futures import ThreadPoolExecutor

import fsspec
import numpy as np
import pytest
from safetensors import safe_open

from model_handler.registry import RegistryError
from model_handler.traffic import TrafficSampler, TrafficStore, default_writer_id


def rows(start: int, count: int, features: int = 3, classes: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Rows whose first feature is their index, so order and identity can be checked."""
    index = np.arange(start, start + count, dtype=np.float32)
    x = np.repeat(index[:, None], features, axis=1)
    x[:, 1:] += np.arange(1, features, dtype=np.float32) / 10
    probs = np.full((count, classes), 1.0 / classes, dtype=np.float32)
    probs[:, 0] = index / 1e6
    return x, probs


def shard_dir(tmp_path):
    return tmp_path / "default" / "fraud" / "traffic"


@pytest.fixture
def store(tmp_path) -> TrafficStore:
    return TrafficStore(f"file://{tmp_path}", "default", "fraud", shard_rows=100, max_shards=50)


@pytest.fixture
def samplers():
    """Samplers made by a test; every one is closed afterwards so no thread outlives it."""
    made: list[TrafficSampler] = []
    yield made
    for sampler in made:
        sampler.close()
        assert not sampler._thread.is_alive()


def test_round_trip_keeps_rows_in_time_order(store, tmp_path):
    store.write_shard(*rows(0, 30))
    store.write_shard(*rows(30, 20))
    x, probs = store.read_recent(1000)
    assert x.dtype == np.float32 and probs.dtype == np.float32
    assert x.shape == (50, 3) and probs.shape == (50, 2)
    np.testing.assert_array_equal(x[:, 0], np.arange(50))
    np.testing.assert_array_equal(probs, rows(0, 50)[1])
    assert store.skipped == 0


def test_shard_holds_the_tensors_and_metadata(store, tmp_path):
    [name] = store.write_shard(*rows(0, 7))
    path = shard_dir(tmp_path) / name
    with safe_open(str(path), framework="numpy") as shard:
        assert sorted(shard.keys()) == ["probs", "x"]
        assert shard.get_tensor("x").shape == (7, 3)
        metadata = shard.metadata()
    assert metadata["writer"] == store.writer_id and metadata["rows"] == "7"
    assert metadata["created"].startswith(name[:4])
    assert sorted(p.name for p in shard_dir(tmp_path).iterdir()) == [name]  # no temp file left


def test_large_batches_are_split_at_shard_rows(store, tmp_path):
    names = store.write_shard(*rows(0, 250))
    assert len(names) == 3
    sizes = []
    for name in names:
        with safe_open(str(shard_dir(tmp_path) / name), framework="numpy") as shard:
            sizes.append(shard.get_tensor("x").shape[0])
    assert sizes == [100, 100, 50]


def test_shard_names_sort_by_time_and_never_collide(tmp_path):
    stores = [TrafficStore(str(tmp_path), "default", "fraud", shard_rows=10, max_shards=1000)
              for _ in range(4)]
    assert len({s.writer_id for s in stores}) == 4

    def write_many(store: TrafficStore) -> list[str]:
        return [store.write_shard(*rows(0, 1))[0] for _ in range(50)]

    with ThreadPoolExecutor(max_workers=4) as pool:
        per_writer = list(pool.map(write_many, stores))
    every = [name for names in per_writer for name in names]
    assert len(set(every)) == 200
    assert sorted(p.name for p in shard_dir(tmp_path).iterdir()) == sorted(every)
    for names in per_writer:  # each writer's shards list in the order it wrote them
        assert sorted(names) == names


def test_default_writer_ids_differ_and_are_file_name_safe():
    ids = {default_writer_id() for _ in range(20)}
    assert len(ids) == 20
    assert all(i.replace("-", "").isalnum() and i == i.lower() for i in ids)


def test_read_recent_returns_the_newest_rows_oldest_first(store):
    for start in (0, 10, 20):
        store.write_shard(*rows(start, 10))
    x, _ = store.read_recent(15)
    np.testing.assert_array_equal(x[:, 0], np.arange(15, 30))
    x, _ = store.read_recent(10)
    np.testing.assert_array_equal(x[:, 0], np.arange(20, 30))


def test_retention_keeps_the_newest_shards(tmp_path):
    store = TrafficStore(str(tmp_path), "default", "fraud", shard_rows=10, max_shards=3)
    written = [store.write_shard(*rows(10 * i, 10))[0] for i in range(5)]
    assert store.shards() == written[2:]
    assert sorted(p.name for p in shard_dir(tmp_path).iterdir()) == written[2:]
    x, _ = store.read_recent(1000)
    np.testing.assert_array_equal(x[:, 0], np.arange(20, 50))


def test_damaged_shards_are_skipped_and_counted(store, tmp_path):
    names = [store.write_shard(*rows(10 * i, 10))[0] for i in range(4)]
    truncated = shard_dir(tmp_path) / names[1]
    truncated.write_bytes(truncated.read_bytes()[:-17])
    (shard_dir(tmp_path) / names[2]).write_bytes(b"\x00" * 64)

    x, probs = store.read_recent(1000)
    np.testing.assert_array_equal(x[:, 0], np.concatenate([np.arange(0, 10), np.arange(30, 40)]))
    assert probs.shape == (20, 2)
    assert store.skipped == 2
    assert set(store.skip_reasons) == {names[1], names[2]}
    assert all("not a readable safetensors file" in r for r in store.skip_reasons.values())


def test_shard_with_other_tensors_is_skipped(store, tmp_path):
    from safetensors.numpy import save

    store.write_shard(*rows(0, 5))
    foreign = shard_dir(tmp_path) / "99999999T000000000000Z-other-00000000.safetensors"
    foreign.write_bytes(save({"x": np.ones((3, 3), np.float32)}))
    x, _ = store.read_recent(100)
    assert x.shape == (5, 3)
    assert store.skip_reasons == {foreign.name: "missing tensors ['probs']"}


def test_feature_count_change_skips_the_older_shards(store):
    store.write_shard(*rows(0, 10, features=3))
    store.write_shard(*rows(10, 10, features=3))
    store.write_shard(*rows(20, 10, features=4))  # the model's schema changed
    x, probs = store.read_recent(1000)
    assert x.shape == (10, 4) and probs.shape == (10, 2)
    np.testing.assert_array_equal(x[:, 0], np.arange(20, 30))
    assert store.skipped == 2
    assert all("has 3 features and 2 classes, newer shards have 4 and 2" == r
               for r in store.skip_reasons.values())


def test_empty_store_reads_nothing(store):
    x, probs = store.read_recent(10)
    assert x.shape == (0, 0) and probs.shape == (0, 0) and store.skipped == 0


def test_missing_storage_root_is_a_registry_error(tmp_path):
    store = TrafficStore(str(tmp_path / "not-mounted"), "default", "fraud")
    with pytest.raises(RegistryError, match="not-mounted.*list traffic shards failed"):
        store.read_recent(10)
    with pytest.raises(RegistryError, match="not-mounted.*write traffic shard"):
        store.write_shard(*rows(0, 3))


@pytest.mark.parametrize("x_shape, probs_shape, problem", [
    ((5,), (5, 2), r"x must be 2-D"), ((5, 3), (4, 2), "x has 5 rows but probs has 4"),
    ((5, 0), (5, 2), "x must be 2-D"), ((5, 3), (5,), "probs must be 2-D"),
])
def test_bad_batches_are_refused(store, x_shape, probs_shape, problem):
    with pytest.raises(ValueError, match=problem):
        store.write_shard(np.zeros(x_shape), np.zeros(probs_shape))


def test_bad_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match="max_shards"):
        TrafficStore(str(tmp_path), "default", "fraud", max_shards=0)
    with pytest.raises(ValueError, match="writer_id 'Pod/1'"):
        TrafficStore(str(tmp_path), "default", "fraud", writer_id="Pod/1")
    with pytest.raises(ValueError, match="max_rows must be >= 1"):
        TrafficStore(str(tmp_path), "default", "fraud").read_recent(0)


def test_append_buffers_into_full_shards(store, tmp_path):
    for start in range(0, 250, 25):
        store.append(*rows(start, 25))
    assert len(store.shards()) == 2
    store.flush()
    assert len(store.shards()) == 3
    x, _ = store.read_recent(1000)
    np.testing.assert_array_equal(x[:, 0], np.arange(250))


def test_memory_uri_works():
    uri = f"memory://traffic-{uuid.uuid4().hex}"
    try:
        store = TrafficStore(uri, "default", "fraud", shard_rows=10, max_shards=2)
        for start in (0, 10, 20):
            store.write_shard(*rows(start, 10))
        assert len(store.shards()) == 2
        x, _ = store.read_recent(100)
        np.testing.assert_array_equal(x[:, 0], np.arange(10, 30))
    finally:
        fs, root = fsspec.core.url_to_fs(uri)
        fs.rm(root, recursive=True)


# --- sampler


def test_sampler_fraction_is_within_statistical_bounds(tmp_path, samplers):
    store = TrafficStore(str(tmp_path), "default", "fraud", shard_rows=5000, max_shards=100)
    sampler = TrafficSampler(store, fraction=0.1, max_queue_rows=200_000, flush_rows=5000,
                             flush_interval_s=60, seed=7)
    samplers.append(sampler)
    total = 0
    for start in range(0, 100_000, 500):
        sampler.sample(*rows(start, 500))
        total += 500
    sampler.close()
    expected, sd = total * 0.1, np.sqrt(total * 0.1 * 0.9)
    assert abs(sampler.sampled - expected) < 5 * sd
    assert sampler.written == sampler.sampled and sampler.dropped == 0
    x, probs = store.read_recent(200_000)
    ids = x[:, 0]
    assert len(ids) == sampler.sampled
    assert np.all(np.diff(ids) > 0)  # a subset of the input rows, in arrival order
    np.testing.assert_array_equal(x, rows(0, total)[0][ids.astype(int)])
    np.testing.assert_array_equal(probs, rows(0, total)[1][ids.astype(int)])
    # every tenth of the stream is sampled at about the same rate: no bias toward early rows
    per_decile = np.histogram(ids, bins=10, range=(0, total))[0]
    assert np.all(np.abs(per_decile - total / 100) < 5 * np.sqrt(total / 10 * 0.1 * 0.9))


def test_sampler_fraction_extremes(store, samplers):
    nothing = TrafficSampler(store, fraction=0.0, seed=1)
    everything = TrafficSampler(store, fraction=1.0, seed=1)
    samplers.extend([nothing, everything])
    assert nothing.sample(*rows(0, 300)) == 0
    assert everything.sample(*rows(0, 300)) == 300
    nothing.close()
    everything.close()
    assert (nothing.sampled, everything.sampled, everything.written) == (0, 300, 300)


class BlockedStore(TrafficStore):
    """A store whose writes hang until released: storage that has become very slow."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.release = threading.Event()
        self.calls = 0

    def write_shard(self, x, probs, oldest=None):
        self.calls += 1
        self.release.wait(timeout=30)
        return super().write_shard(x, probs, oldest)


def test_sampler_never_blocks_on_slow_storage(tmp_path, samplers):
    store = BlockedStore(str(tmp_path), "default", "fraud", shard_rows=1000)
    sampler = TrafficSampler(store, fraction=1.0, max_queue_rows=200, flush_rows=50,
                             flush_interval_s=60, seed=0)
    samplers.append(sampler)
    latencies = []
    for start in range(0, 20_000, 100):
        began = time.perf_counter()
        sampler.sample(*rows(start, 100))
        latencies.append(time.perf_counter() - began)
    assert max(latencies) < 0.2, f"sample() took up to {max(latencies):.3f}s"
    deadline = time.monotonic() + 10  # on a loaded machine the writer thread may start late
    while store.calls < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert store.calls >= 1  # the background thread is stuck in a write
    assert sampler.dropped > 0
    assert sampler.queued_rows <= 200

    store.release.set()
    sampler.close()
    assert sampler.sampled == 20_000
    assert sampler.written + sampler.dropped == sampler.sampled
    assert store.read_recent(100_000)[0].shape[0] == sampler.written


def test_close_flushes_everything(store, samplers):
    sampler = TrafficSampler(store, fraction=0.5, max_queue_rows=10_000, flush_rows=1_000_000,
                             flush_interval_s=3600, seed=3)
    samplers.append(sampler)
    queued = sum(sampler.sample(*rows(start, 100)) for start in range(0, 2000, 100))
    assert queued > 0 and store.shards() == []  # nothing reached storage yet
    sampler.close()
    assert not sampler._thread.is_alive()
    assert sampler.written == queued == sampler.sampled
    assert store.read_recent(10_000)[0].shape[0] == queued
    sampler.close()  # a second close is harmless


def sampled_until_written(store, samplers, n_rows: int, written: int, poll_s: float, **flush) -> TrafficSampler:
    """A sampler that keeps every row (with the `flush` settings) given rows 0..`n_rows`, returned once
    it has written `written` of them or 10 seconds have passed."""
    sampler = TrafficSampler(store, fraction=1.0, seed=0, **flush)
    samplers.append(sampler)
    sampler.sample(*rows(0, n_rows))
    deadline = time.monotonic() + 10
    while sampler.written < written and time.monotonic() < deadline:
        time.sleep(poll_s)
    return sampler


def test_sampler_flushes_on_its_own_after_the_interval(store, samplers):
    sampler = sampled_until_written(store, samplers, 40, 40, 0.05, flush_rows=1_000_000, flush_interval_s=0.2)
    assert sampler.written == 40 and sampler._thread.is_alive()
    np.testing.assert_array_equal(store.read_recent(100)[0][:, 0], np.arange(40))


def test_sampler_flushes_when_enough_rows_wait(store, samplers):
    sampler = sampled_until_written(store, samplers, 120, 100, 0.02, flush_rows=50, flush_interval_s=3600)
    assert sampler.written == 100 and sampler.queued_rows == 20  # full shards only, until close


def test_storage_errors_are_counted_not_raised(tmp_path, samplers, caplog):
    (tmp_path / "default").write_text("a file where the namespace directory should be")
    store = TrafficStore(str(tmp_path), "default", "fraud")
    sampler = TrafficSampler(store, fraction=1.0, flush_rows=10, flush_interval_s=3600, seed=0)
    samplers.append(sampler)
    with caplog.at_level(logging.WARNING, logger="model_handler.traffic"):
        for start in range(0, 100, 25):
            sampler.sample(*rows(start, 25))
        sampler.close()
    assert sampler.write_errors == 10 and sampler.failed_rows == 100 and sampler.written == 0
    assert "traffic sampler lost 10 rows" in caplog.text and "write traffic shard" in caplog.text


def test_sampling_after_close_drops(store, samplers):
    sampler = TrafficSampler(store, fraction=1.0, seed=0)
    samplers.append(sampler)
    sampler.close()
    assert sampler.sample(*rows(0, 10)) == 0
    assert sampler.dropped == 10 and sampler.written == 0


def test_sampler_refuses_a_changed_schema_and_bad_settings(store, samplers):
    sampler = TrafficSampler(store, fraction=1.0, seed=0)
    samplers.append(sampler)
    sampler.sample(*rows(0, 5, features=3))
    with pytest.raises(ValueError, match="batch has 4 features and 2 classes; this sampler has seen 3 and 2"):
        sampler.sample(*rows(5, 5, features=4))
    with pytest.raises(ValueError, match="fraction must be within"):
        TrafficSampler(store, fraction=1.5)
    with pytest.raises(ValueError, match="flush_interval_s"):
        TrafficSampler(store, flush_interval_s=0)


def test_seeded_samplers_choose_the_same_rows(tmp_path, samplers):
    chosen = []
    for run in range(2):
        store = TrafficStore(str(tmp_path / f"run{run}"), "default", "fraud")
        (tmp_path / f"run{run}").mkdir()
        sampler = TrafficSampler(store, fraction=0.3, seed=42)
        samplers.append(sampler)
        sampler.sample(*rows(0, 1000))
        sampler.close()
        chosen.append(store.read_recent(1000)[0][:, 0])
    np.testing.assert_array_equal(chosen[0], chosen[1])


def test_read_since_takes_only_shards_sampled_entirely_after(tmp_path):
    store = TrafficStore(str(tmp_path), "default", "fraud", writer_id="pod-a")
    t0 = time.time()
    store.write_shard(*rows(0, 10), oldest=t0 - 60)       # sampled a minute ago: before the drift
    store.write_shard(*rows(100, 10), oldest=t0 + 1)      # sampled after it
    since = datetime.fromtimestamp(t0, timezone.utc)
    x, _ = store.read_recent(1000, since=since)
    assert x.shape[0] == 10 and np.array_equal(x, rows(100, 10)[0])
    assert store.read_recent(1000)[0].shape[0] == 20


def test_sampler_names_shards_by_their_oldest_row(tmp_path):
    store = TrafficStore(str(tmp_path), "default", "fraud", writer_id="pod-b")
    sampler = TrafficSampler(store, fraction=1.0, flush_rows=10_000, flush_interval_s=60, seed=0)
    before = datetime.now(timezone.utc)
    sampler.sample(*rows(0, 5))
    time.sleep(0.05)
    sampler.sample(*rows(5, 5))
    sampler.close()
    (name,) = store.shards()
    named = datetime.strptime(name[:22], "%Y%m%dT%H%M%S%fZ").replace(tzinfo=timezone.utc)
    assert before <= named < before + timedelta(seconds=0.05)


def test_on_s3_a_reader_sees_shards_other_processes_wrote_after_its_first_listing(tmp_path, monkeypatch):
    """The heal Job lists the traffic shards, waits, and lists again while the pods write more. s3fs
    caches listings per process, and a write by another process does not invalidate them: the Job
    saw the first listing forever (a CI run healed on 184 rows while the pods had written 1,500)."""
    import s3fs

    from sandbox.s3 import S3Server

    with S3Server(log_path=tmp_path / "moto.log") as s3:
        for key, value in s3.env.items():
            monkeypatch.setenv(key, value)
        s3fs.S3FileSystem.clear_instance_cache()
        s3.make_bucket("selfheal")
        uri = "s3://selfheal/registry"
        reader = TrafficStore(uri, "ns", "fraud")
        writer = ("import sys, numpy as np\nfrom model_handler.traffic import TrafficStore\n"
                  "x = np.full((int(sys.argv[1]), 3), 1.0, np.float32); p = np.full((x.shape[0], 2), 0.5, np.float32)\n"
                  "TrafficStore(sys.argv[2], 'ns', 'fraud', writer_id=sys.argv[3]).write_shard(x, p)\n")

        def pod_writes(count: int, writer_id: str) -> None:
            subprocess.run([sys.executable, "-c", writer, str(count), uri, writer_id], check=True,
                           env={**os.environ, "PYTHONSAFEPATH": "1"}, timeout=120)

        pod_writes(100, "pod-a")
        x, _ = reader.read_recent(1000)
        assert len(x) == 100
        pod_writes(250, "pod-b")
        x, _ = reader.read_recent(1000)
        assert len(x) == 350 and len(reader.shards()) == 2
