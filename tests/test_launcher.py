"""TorchServeProcess and its CLI against real TorchServe processes: isolation, clean stops, failures."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from model_handler.archive import build_archive
from model_handler.launcher import ServedModel, StartInterrupted, TorchServeError, TorchServeProcess, free_ports
from serving_support import FEATURES, PLAIN_HANDLER, REPO, build_plain_store, post

pytestmark = pytest.mark.timeout(240)
ROW = [10.0, 1.0, 2.0, 0.5]


def processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line contains `text` (e.g. an instance's work directory)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if text in cmdline and alive(int(entry)):
                found.append(int(entry))
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("launcher")
    store, _ = build_plain_store(root)
    return store


def test_two_instances_side_by_side_then_stop_leaves_nothing(store):
    first = TorchServeProcess(store, {"plain": "plain.mar"})
    second = TorchServeProcess(store, [ServedModel("plain", "plain.mar", workers=2)])
    starts = [threading.Thread(target=ts.start, kwargs={"timeout": 120}) for ts in (first, second)]
    for t in starts:
        t.start()
    for t in starts:
        t.join()
    try:
        assert first.process and second.process, "an instance did not start"
        urls = {first.inference_url, first.management_url, first.metrics_url,
                second.inference_url, second.management_url, second.metrics_url}
        assert len(urls) == 6
        assert first.workdir != second.workdir
        # each instance's worker sockets live in its own TMPDIR
        assert list((first.workdir / "tmp").glob(".ts.sock.*")) and list((second.workdir / "tmp").glob(".ts.sock.*"))
        for ts in (first, second):
            status, answer = post(f"{ts.inference_url}/predictions/plain", ROW)
            assert status == 200 and len(answer["probabilities"][0]) == 2

        second_pids = second.group_pids()
        workers = second.worker_pids("plain")
        assert len(workers) == 2 and set(workers) <= set(second_pids)
        assert second.pid in second_pids and len(second_pids) >= 4  # launcher, JVM, two workers
        second_workdir = second.workdir
        second.stop()
        assert not [pid for pid in second_pids if alive(pid)]
        assert not second_workdir.exists()
        assert post(f"{first.inference_url}/predictions/plain", ROW)[0] == 200  # the other one is untouched
    finally:
        first_pids = first.group_pids()
        first.stop()
        second.stop()
    assert first_pids and not [pid for pid in first_pids if alive(pid)]


def test_server_that_dies_at_start_is_detected_with_its_log(store):
    """TorchServe exits when it cannot bind its port (and `torchserve --start` would still say OK)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ts = TorchServeProcess(store, {"plain": "plain.mar"}, ports={"inference": port})
        started = time.monotonic()
        with pytest.raises(TorchServeError) as info:
            ts.start(timeout=90)
        group = ts.pid
    assert time.monotonic() - started < 60
    message = str(info.value)
    assert "exited" in message and "Address already in use" in message and str(port) in message
    assert ts.process is None and not processes_mentioning(str(ts.workdir))


def test_interrupted_start_stops_what_it_spawned(store):
    """The CLI's SIGTERM handler only sets an event; start() stops the server it launched, whenever
    the event was set: before the spawn (here), or while TorchServe was loading. (It used to raise from
    the handler, which could land inside Popen after the fork: a CI run left a TorchServe behind.)"""
    interrupt = threading.Event()
    interrupt.set()
    ts = TorchServeProcess(store, {"plain": "plain.mar"})
    started = time.monotonic()
    with pytest.raises(StartInterrupted):
        ts.start(timeout=90, interrupt=interrupt)
    assert time.monotonic() - started < 30
    assert ts.process is None and not processes_mentioning(str(ts.workdir))


def test_worker_that_crashes_while_loading_is_reported(tmp_path, store):
    handler = tmp_path / "exploding_handler.py"
    handler.write_text("raise RuntimeError('weights checksum mismatch')\n")
    build_archive(store.parent / "model", handler, store, "exploding")
    ts = TorchServeProcess(store, {"exploding": "exploding.mar"})
    with pytest.raises(TorchServeError) as info:
        ts.start(timeout=90)
    message = str(info.value)
    assert "worker failed to load" in message and "weights checksum mismatch" in message
    assert ts.process is None and not processes_mentioning(str(ts.workdir))


def test_unusable_inputs_are_refused_before_anything_starts(tmp_path, store):
    (store / "garbage.mar").write_bytes(b"not a zip archive")
    with pytest.raises(TorchServeError, match="garbage.mar.*not a zip"):
        TorchServeProcess(store, {"m": "garbage.mar"}).start()
    with pytest.raises(TorchServeError, match="'missing.mar' not found"):
        TorchServeProcess(store, {"m": "missing.mar"})
    with pytest.raises(TorchServeError, match="directly inside the model store"):
        TorchServeProcess(store.parent, {"m": "store/plain.mar"})
    with pytest.raises(TorchServeError, match="model store not found"):
        TorchServeProcess(tmp_path / "nowhere", {"m": "plain.mar"})
    with pytest.raises(ValueError, match="workers"):
        ServedModel("m", "plain.mar", workers=0)
    with pytest.raises(ValueError, match="unknown port names"):
        TorchServeProcess(store, {"m": "plain.mar"}, ports={"grpc": 1234})


def test_free_ports_are_distinct_and_bindable():
    ports = free_ports(6)
    assert len(set(ports)) == 6
    for port in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_cli_serves_until_sigterm(store, tmp_path):
    workdir = tmp_path / "cli"
    cmd = [sys.executable, "-m", "model_handler.launcher", "serve", "--model-store", str(store),
           "--model", "plain=plain.mar", "--workers", "1", "--batch-size", "4", "--workdir", str(workdir)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
        urls = json.loads(line)
        status, answer = post(f"{urls['inference']}/predictions/plain", dict(zip(FEATURES, ROW)))
        assert status == 200 and answer["label"][0] in ("legit", "fraud")
        with urlopen_json(f"{urls['management']}/models/plain") as desc:
            assert desc[0]["batchSize"] == 4
        server_pid = urls["pid"]
        assert alive(server_pid)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert not alive(server_pid)
        assert not [p for p in os.listdir("/proc") if p.isdigit() and _in_group(int(p), server_pid)]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_sigterm_while_starting_stops_everything(store, tmp_path):
    workdir = tmp_path / "cli-early"
    cmd = [sys.executable, "-m", "model_handler.launcher", "serve", "--model-store", str(store),
           "--model", "plain=plain.mar", "--workdir", str(workdir)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (workdir / "logs" / "console.log").exists():  # TorchServe launched, far from ready
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 128 + signal.SIGTERM, err
        assert out == "" and "while starting" in err
        assert not processes_mentioning(str(workdir))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_rejects_malformed_model_argument(store):
    done = subprocess.run([sys.executable, "-m", "model_handler.launcher", "serve", "--model-store", str(store),
                           "--model", "plain.mar"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "NAME=FILE" in done.stderr


class urlopen_json:
    def __init__(self, url):
        import urllib.request
        self._response = urllib.request.urlopen(url, timeout=10)

    def __enter__(self):
        return json.loads(self._response.read())

    def __exit__(self, *exc):
        self._response.close()


def _in_group(pid: int, pgid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[2]) == pgid and fields[0] != "Z"
