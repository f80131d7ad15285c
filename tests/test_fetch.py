"""The storage initializer (`python -m model_handler.fetch`): an archive reaches a local directory
only when every byte matches `<archive>.sha256`, from a local path, file:// and s3:// (a moto
server process, the real s3fs client)."""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from model_handler.fetch import FetchError, fetch, local_name, write_digest
from sandbox.s3 import S3Server


def model_dir(root: Path) -> Path:
    archive = root / "fraud"
    (archive / "sub").mkdir(parents=True)
    (archive / "model.safetensors").write_bytes(os.urandom(3000))
    (archive / "reference.json").write_text('{"bins": [1, 2]}')
    (archive / "sub" / "handler.py").write_text("print('hi')\n")
    return archive


def test_a_directory_arrives_verified_and_a_digest_is_sha256sum_format(tmp_path):
    archive = model_dir(tmp_path / "src")
    digest = write_digest(archive)
    assert digest == tmp_path / "src" / "fraud.sha256"
    check = subprocess.run(["sha256sum", "--check", "--quiet", str(digest)], cwd=archive, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    for source in (str(archive), archive.as_uri(), archive.as_uri() + "/"):
        local = fetch(source, tmp_path / "dest")
        assert local == tmp_path / "dest" / "fraud"
        assert sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()) == [
            "model.safetensors", "reference.json", "sub/handler.py"]
        assert (local / "model.safetensors").read_bytes() == (archive / "model.safetensors").read_bytes()


@pytest.mark.parametrize("damage, message", [
    (lambda a: (a / "reference.json").write_text('{"bins": [1, 3]}'), "reference.json: sha256"),
    (lambda a: (a / "extra.py").write_text("x"), "files not in the checksum file: extra.py"),
    (lambda a: (a / "sub" / "handler.py").unlink(), "sub/handler.py: listed in the checksum file but not found"),
    (lambda a: (a.parent / "fraud.sha256").unlink(), "checksum file not found"),
    (lambda a: (a.parent / "fraud.sha256").write_text("not a digest\n"), "is not `<sha256 hex>  <file name>`"),
])
def test_a_corrupt_or_unlisted_archive_is_refused_and_nothing_is_left(tmp_path, damage, message):
    archive = model_dir(tmp_path / "src")
    write_digest(archive)
    damage(archive)
    with pytest.raises(FetchError, match=message.replace("(", r"\(").replace("`", ".")):
        fetch(archive.as_uri(), tmp_path / "dest")
    assert not (tmp_path / "dest").exists() or list((tmp_path / "dest").iterdir()) == []


def test_a_mar_file_is_checked_and_unpacked_for_the_heal_job(tmp_path):
    archive = model_dir(tmp_path / "src")
    mar = tmp_path / "src" / "fraud.mar"
    with zipfile.ZipFile(mar, "w") as z:
        for f in archive.rglob("*"):
            if f.is_file():
                z.write(f, f.relative_to(archive).as_posix())
    write_digest(mar)
    assert fetch(str(mar), tmp_path / "serve") == tmp_path / "serve" / "fraud.mar"
    assert local_name(str(mar), unpack=True) == "fraud"
    unpacked = fetch(mar.as_uri(), tmp_path / "heal", unpack=True)
    assert unpacked == tmp_path / "heal" / "fraud" and (unpacked / "sub" / "handler.py").is_file()
    mar.write_bytes(mar.read_bytes() + b"tampered")
    with pytest.raises(FetchError, match="does not match"):
        fetch(str(mar), tmp_path / "again")


def test_the_command_fails_with_the_reason_in_the_termination_log(tmp_path):
    archive = model_dir(tmp_path / "src")
    log = tmp_path / "termination-log"
    run = subprocess.run([sys.executable, "-m", "model_handler.fetch", archive.as_uri(), str(tmp_path / "dest"),
                          "--termination-log", str(log)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert "checksum file not found" in run.stderr and "--write-digest" in run.stderr
    assert log.read_text().startswith("model archive not delivered: checksum file not found")
    subprocess.run([sys.executable, "-m", "model_handler.fetch", "--write-digest", str(archive)], check=True,
                   capture_output=True, timeout=60)
    run = subprocess.run([sys.executable, "-m", "model_handler.fetch", archive.as_uri(), str(tmp_path / "dest")],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and "sha256 verified" in run.stdout, run.stderr


def test_from_s3_with_credentials_from_the_environment(tmp_path):
    archive = model_dir(tmp_path / "src")
    write_digest(archive)
    with S3Server(log_path=tmp_path / "moto.log") as s3:
        s3.make_bucket("models")
        fs = s3.filesystem()
        fs.put(str(archive), "models/team/fraud", recursive=True)
        fs.put(str(tmp_path / "src" / "fraud.sha256"), "models/team/fraud.sha256")
        env = {**os.environ, **s3.env}
        dest = tmp_path / "dest"
        run = subprocess.run([sys.executable, "-m", "model_handler.fetch", "s3://models/team/fraud", str(dest)],
                             env=env, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        assert (dest / "fraud" / "sub" / "handler.py").read_text() == "print('hi')\n"
        fs.pipe("models/team/fraud/reference.json", b"{}")
        run = subprocess.run([sys.executable, "-m", "model_handler.fetch", "s3://models/team/fraud", str(tmp_path / "d2")],
                             env=env, capture_output=True, text=True, timeout=120)
        assert run.returncode == 1 and "s3://models/team/fraud/reference.json: sha256" in run.stderr
        run = subprocess.run([sys.executable, "-m", "model_handler.fetch", "s3://models/nothing/here", str(tmp_path / "d4")],
                             env=env, capture_output=True, text=True, timeout=120)
        assert run.returncode == 1 and "archive not found: s3://models/nothing/here" in run.stderr


def test_a_uri_whose_driver_is_missing_names_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "gcsfs", None)   # not installed (the images' default)
    with pytest.raises(FetchError, match="driver installed.*storage-extra"):
        fetch("gs://bucket/models/fraud", tmp_path / "dest")
