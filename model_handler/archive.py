"""Package a model directory and a handler into a TorchServe model archive.

A thin wrapper over `torch-model-archiver`, run as a subprocess with its own TMPDIR: the archiver
stages files in `$TMPDIR/<model name>`, so two builds of the same name at once would otherwise
overwrite each other. Every file of `model_dir` lands at the archive root (where the handler finds
it through `context.system_properties["model_dir"]`).

Formats: `mar` (one zip file; easy to copy into a model store or a registry) and `dir` (the archiver's
`no-archive` layout; TorchServe serves it in place, skipping the unzip at every worker start).

    python -m model_handler.archive --model-dir out/model --handler model_handler/handler.py \
        --out-dir store --name fraud [--extra-file rules.yaml ...] [--format mar|dir]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

__all__ = ["ArchiveError", "build_archive", "read_manifest"]

_FORMATS = {"mar": "default", "dir": "no-archive"}
MANIFEST = "MAR-INF/MANIFEST.json"


class ArchiveError(RuntimeError):
    """The archive could not be built or read; the message says which file and why."""


def build_archive(
    model_dir: str | os.PathLike,
    handler_file: str | os.PathLike,
    out_dir: str | os.PathLike,
    name: str,
    extra_files: Sequence[str | os.PathLike] = (),
    *,
    version: str = "1.0",
    archive_format: str = "mar",
    force: bool = True,
    config_file: str | os.PathLike | None = None,
) -> Path:
    """Build `<out_dir>/<name>.mar` (or the directory `<out_dir>/<name>`) and return its path.

    `config_file` is an optional TorchServe model-config YAML (minWorkers, batchSize, ...).
    """
    if archive_format not in _FORMATS:
        raise ArchiveError(f"unknown archive format {archive_format!r}; use one of {sorted(_FORMATS)}")
    if not name or not all(c.isalnum() or c in "-_." for c in name):
        raise ArchiveError(f"model name {name!r} must be non-empty and use only letters, digits, '-', '_', '.'")
    model_dir, handler_file, out_dir = Path(model_dir), Path(handler_file), Path(out_dir)
    if not model_dir.is_dir():
        raise ArchiveError(f"model directory not found: {model_dir}")
    if not handler_file.is_file() or handler_file.suffix != ".py":
        raise ArchiveError(f"handler must be an existing .py file: {handler_file}")
    extras = [Path(p) for p in extra_files]
    for path in extras + ([Path(config_file)] if config_file else []):
        if not path.exists():
            raise ArchiveError(f"extra file not found: {path}")
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / (f"{name}.mar" if archive_format == "mar" else name)
    if target.exists() and not force:
        raise ArchiveError(f"archive already exists: {target}")

    cmd = [
        sys.executable, "-m", "model_archiver.model_packaging",
        "--model-name", name,
        "--version", version,
        "--handler", str(handler_file.resolve()),
        "--extra-files", ",".join(str(p.resolve()) for p in [model_dir, *extras]),
        "--export-path", str(out_dir.resolve()),
        "--archive-format", _FORMATS[archive_format],
    ]
    if config_file:
        cmd += ["--config-file", str(Path(config_file).resolve())]
    if force:
        cmd.append("--force")
    with tempfile.TemporaryDirectory(prefix="selfheal-archive-") as staging:
        env = {**os.environ, "TMPDIR": staging}
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not target.exists():
        detail = (done.stderr or done.stdout).strip()[-2000:]
        raise ArchiveError(f"torch-model-archiver failed for {name!r} (exit {done.returncode}): {detail}")
    return target


def read_manifest(archive: str | os.PathLike) -> dict:
    """The MANIFEST.json of a `.mar`, `.tar.gz` or unpacked archive directory."""
    path = Path(archive)
    try:
        if path.is_dir():
            return json.loads((path / MANIFEST).read_text())
        if path.name.endswith((".tar.gz", ".tgz")):
            with tarfile.open(path) as tar:
                member = next(m for m in tar.getmembers() if m.name.endswith(MANIFEST))
                return json.load(tar.extractfile(member))
        with zipfile.ZipFile(path) as zf:
            return json.loads(zf.read(MANIFEST))
    except (OSError, KeyError, StopIteration, ValueError, zipfile.BadZipFile, tarfile.TarError) as exc:
        raise ArchiveError(f"cannot read {MANIFEST} from {path}: {exc}") from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model_handler.archive", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", required=True, help="directory whose files go to the archive root")
    parser.add_argument("--handler", required=True, help="TorchServe handler .py file")
    parser.add_argument("--out-dir", required=True, help="where the archive is written (a model store)")
    parser.add_argument("--name", required=True, help="model name")
    parser.add_argument("--extra-file", action="append", default=[], help="another file to add (repeatable)")
    parser.add_argument("--version", default="1.0")
    parser.add_argument("--format", choices=sorted(_FORMATS), default="mar")
    parser.add_argument("--config-file", help="TorchServe model-config YAML")
    args = parser.parse_args(argv)
    try:
        path = build_archive(
            args.model_dir, args.handler, args.out_dir, args.name, args.extra_file,
            version=args.version, archive_format=args.format, config_file=args.config_file,
        )
    except ArchiveError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
