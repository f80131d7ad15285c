"""build_archive against the real torch-model-archiver: layouts, manifests, isolation, errors."""
from __future__ import annotations

import subprocess
import sys
import threading
import zipfile

import pytest
from safetensors.torch import load_file

from bench.plain_handler import WEIGHTS, save_plain_mlp
from model_handler.archive import ArchiveError, build_archive, read_manifest
from serving_support import PLAIN_HANDLER, REPO


@pytest.fixture
def model_dir(tmp_path):
    directory = save_plain_mlp(tmp_path / "model", ["a", "b"], ["x", "y"], hidden=(4,))
    (tmp_path / "rules.yaml").write_text("rules: []\n")
    return directory


def test_mar_holds_model_files_handler_and_extras_at_its_root(tmp_path, model_dir):
    mar = build_archive(model_dir, PLAIN_HANDLER, tmp_path / "store", "fraud", [tmp_path / "rules.yaml"], version="2.1")
    assert mar == tmp_path / "store" / "fraud.mar"
    names = set(zipfile.ZipFile(mar).namelist())
    assert {"plain_mlp.safetensors", "plain_mlp.json", "plain_handler.py", "rules.yaml", "MAR-INF/MANIFEST.json"} <= names
    manifest = read_manifest(mar)["model"]
    assert manifest["modelName"] == "fraud" and manifest["modelVersion"] == "2.1"
    assert manifest["handler"] == "plain_handler.py"


def test_directory_format_is_served_in_place(tmp_path, model_dir):
    out = build_archive(model_dir, PLAIN_HANDLER, tmp_path / "store", "fraud", archive_format="dir")
    assert out.is_dir() and (out / "plain_mlp.safetensors").is_file() and (out / "plain_handler.py").is_file()
    assert read_manifest(out)["model"]["modelName"] == "fraud"


def test_concurrent_builds_of_one_name_do_not_mix_their_files(tmp_path):
    """The archiver stages in $TMPDIR/<name>; each build gets its own TMPDIR."""
    dirs = [save_plain_mlp(tmp_path / f"m{i}", ["a", "b"], ["x", "y"], hidden=(4,), seed=i) for i in range(3)]
    results = {}

    def build(i):
        results[i] = build_archive(dirs[i], PLAIN_HANDLER, tmp_path / f"store{i}", "same")

    threads = [threading.Thread(target=build, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(3):
        with zipfile.ZipFile(results[i]) as zf:
            (tmp_path / f"out{i}.safetensors").write_bytes(zf.read(WEIGHTS))
        packed = load_file(str(tmp_path / f"out{i}.safetensors"))
        original = load_file(str(dirs[i] / WEIGHTS))
        assert all((packed[k] == original[k]).all() for k in original)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model_dir": "missing"}, "model directory not found"),
        ({"handler_file": "rules.yaml"}, "handler must be an existing .py file"),
        ({"name": "bad/name"}, "model name"),
        ({"archive_format": "zip"}, "unknown archive format"),
        ({"extra_files": ["nope.txt"]}, "extra file not found"),
    ],
)
def test_bad_arguments_are_named(tmp_path, model_dir, change, message):
    args = {"model_dir": model_dir, "handler_file": PLAIN_HANDLER, "out_dir": tmp_path / "store", "name": "m"}
    for key, value in change.items():
        args[key] = [tmp_path / v for v in value] if key == "extra_files" else (
            tmp_path / value if key in ("model_dir", "handler_file") else value)
    with pytest.raises(ArchiveError, match=message):
        build_archive(**args)


def test_existing_archive_is_kept_unless_forced(tmp_path, model_dir):
    build_archive(model_dir, PLAIN_HANDLER, tmp_path, "m")
    with pytest.raises(ArchiveError, match="already exists"):
        build_archive(model_dir, PLAIN_HANDLER, tmp_path, "m", force=False)


def test_unreadable_archive_manifest_is_an_archive_error(tmp_path):
    (tmp_path / "x.mar").write_bytes(b"junk")
    with pytest.raises(ArchiveError, match="x.mar"):
        read_manifest(tmp_path / "x.mar")


def test_cli_prints_the_archive_path(tmp_path, model_dir):
    cmd = [sys.executable, "-m", "model_handler.archive", "--model-dir", str(model_dir), "--handler",
           str(PLAIN_HANDLER), "--out-dir", str(tmp_path / "s"), "--name", "cli", "--format", "dir"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(tmp_path / "s" / "cli")
    bad = subprocess.run(cmd[:4] + [str(tmp_path / "nope")] + cmd[5:], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "model directory not found" in bad.stderr
