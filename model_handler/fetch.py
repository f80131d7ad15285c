"""The storage initializer: copy a model archive from an fsspec URI into a local directory, hash-checked.

Serving pods and heal Jobs run it as an init container of the model-server image (the operator
renders it, `shm_operator.children`), so TorchServe and `model_handler.heal` start from a local
emptyDir, the way KServe's storage-initializer does:

    python -m model_handler.fetch s3://bucket/models/fraud /var/run/selfheal/model
    python -m model_handler.fetch s3://bucket/models/fraud.mar /var/run/selfheal/model --unpack

The archive is a TorchServe model directory (the archiver's `no-archive` layout) or one file (a
`.mar`). Beside it lies `<archive>.sha256` in `sha256sum` format, one line `<hex>  <name>` per file:
for a file, its base name; for a directory, every file's path relative to it. The copy is refused
(exit 1, the reason on stderr and in the termination log) when that file is missing or unreadable,
when a file's sha256 differs, or when the directory holds a file the list lacks or lacks a listed one;
nothing is left in DEST then. Write the list where the archive is built:

    python -m model_handler.fetch --write-digest out/store/fraud     # -> out/store/fraud.sha256

Credentials and endpoints come from the environment, as the filesystem's driver reads them (s3fs:
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, or the pod's web identity; gcsfs and
adlfs their own). `--unpack` extracts a `.mar` (a zip) into `DEST/<name without .mar>/`, the model
directory the heal Job reads.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import posixpath
import shutil
import sys
import zipfile
from pathlib import Path

import fsspec

__all__ = ["FetchError", "fetch", "digest_lines", "write_digest", "archive_name", "local_name"]

DIGEST_SUFFIX = ".sha256"
CHUNK = 1 << 20


class FetchError(RuntimeError):
    """The archive could not be delivered; the message names the file and why."""


def archive_name(source: str) -> str:
    """The archive's base name: `s3://b/models/fraud/` -> `fraud`."""
    return posixpath.basename(source.rstrip("/"))


def local_name(source: str, unpack: bool = False) -> str:
    """The name under DEST that `fetch` produces: the archive's name, or for `--unpack` of a `.mar`
    the directory it is extracted into."""
    name = archive_name(source)
    return name[: -len(".mar")] if unpack and name.endswith(".mar") else name


def _parse_digest(text: str, where: str) -> dict[str, str]:
    entries: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(None, 1)
        digest = parts[0].lower()
        if len(parts) != 2 or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise FetchError(f"{where}: line {number} is not `<sha256 hex>  <file name>`: {line[:120]!r}")
        name = parts[1].strip().lstrip("*")   # sha256sum's binary-mode marker
        name = name[2:] if name.startswith("./") else name
        if name.startswith("/") or ".." in name.split("/"):
            raise FetchError(f"{where}: line {number}: file name {name!r} leaves the archive")
        entries[name] = digest
    if not entries:
        raise FetchError(f"{where} lists no file")
    return entries


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def digest_lines(path: str | os.PathLike) -> str:
    """The `sha256sum` list of a local archive (a file, or every file of a directory)."""
    path = Path(path)
    if path.is_file():
        return f"{_sha256_file(path)}  {path.name}\n"
    if not path.is_dir():
        raise FetchError(f"archive not found: {path}")
    files = sorted(p for p in path.rglob("*") if p.is_file())
    if not files:
        raise FetchError(f"archive directory is empty: {path}")
    return "".join(f"{_sha256_file(p)}  {p.relative_to(path).as_posix()}\n" for p in files)


def write_digest(path: str | os.PathLike) -> Path:
    """Write `<path>.sha256` beside a local archive and return its path."""
    path = Path(path)
    target = path.parent / (path.name + DIGEST_SUFFIX)
    target.write_text(digest_lines(path))
    return target


def _copy_checked(fs, remote: str, local: Path, expected: str, shown: str) -> None:
    local.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    try:
        with fs.open(remote, "rb") as src, open(local, "wb") as dst:
            while chunk := src.read(CHUNK):
                digest.update(chunk)
                dst.write(chunk)
    except FileNotFoundError:
        raise FetchError(f"{shown}: listed in the checksum file but not found") from None
    if digest.hexdigest() != expected:
        raise FetchError(f"{shown}: sha256 {digest.hexdigest()} does not match the checksum file's {expected} "
                         "(corrupt or changed since the checksum was written)")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def fetch(source: str, dest: str | os.PathLike, unpack: bool = False) -> Path:
    """Copy the archive at `source` (fsspec URI or local path) into `dest`, verified against
    `<source>.sha256`; return the local archive (file or directory). Atomic: a failed copy leaves
    nothing under its final name."""
    dest = Path(dest)
    name = archive_name(source)
    if not name:
        raise FetchError(f"no archive name in {source!r}")
    try:
        fs, path = fsspec.core.url_to_fs(source.rstrip("/"))
    except (ImportError, ValueError) as exc:
        raise FetchError(f"cannot open {source}: {exc} (is the filesystem's driver installed? "
                         "s3fs is in the model-server image; gcsfs and adlfs come with the extra `storage-extra`)") from exc
    digest_uri = source.rstrip("/") + DIGEST_SUFFIX
    try:
        if not fs.exists(path):
            raise FetchError(f"archive not found: {source}")
        raw = fs.cat_file(path + DIGEST_SUFFIX)
    except FileNotFoundError:
        raise FetchError(f"checksum file not found: {digest_uri} (write it with "
                         f"`python -m model_handler.fetch --write-digest <archive>` and upload it beside the archive)") from None
    except FetchError:
        raise
    except Exception as exc:  # the driver's own errors: credentials, endpoint, permissions
        raise FetchError(f"cannot read {source}: {type(exc).__name__}: {exc}") from exc
    entries = _parse_digest(raw.decode("utf-8", errors="replace"), digest_uri)

    dest.mkdir(parents=True, exist_ok=True)
    staging = dest / f".{name}.partial"
    _remove(staging)
    try:
        if fs.isdir(path):
            found = {posixpath.relpath(f, path): f for f in fs.find(path)}
            extra = sorted(set(found) - set(entries))
            if extra:
                raise FetchError(f"{source}: files not in the checksum file: {', '.join(extra[:10])}")
            for relative, expected in sorted(entries.items()):
                if relative not in found:
                    raise FetchError(f"{source}/{relative}: listed in the checksum file but not found")
                _copy_checked(fs, found[relative], staging / relative, expected, f"{source.rstrip('/')}/{relative}")
        else:
            if len(entries) != 1:
                raise FetchError(f"{digest_uri}: a file archive needs exactly one line, found {len(entries)}")
            (listed, expected), = entries.items()
            if listed != name:
                raise FetchError(f"{digest_uri} lists {listed!r}, not the archive {name!r}")
            _copy_checked(fs, path, staging, expected, source)
        final = dest / name
        _remove(final)
        os.replace(staging, final)
    except FetchError:
        raise
    except Exception as exc:
        raise FetchError(f"cannot copy {source}: {type(exc).__name__}: {exc}") from exc
    finally:
        _remove(staging)
    if unpack and final.is_file() and name.endswith(".mar"):
        target = dest / local_name(source, unpack=True)
        try:
            with zipfile.ZipFile(final) as archive:
                archive.extractall(target)   # zipfile refuses absolute and `..` member names
        except zipfile.BadZipFile as exc:
            raise FetchError(f"{source}: not a model archive (.mar is a zip): {exc}") from exc
        return target
    return final


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model_handler.fetch", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", nargs="?", help="fsspec URI or path of the archive (file or directory)")
    parser.add_argument("dest", nargs="?", help="local directory to copy it into")
    parser.add_argument("--unpack", action="store_true", help="extract a .mar into DEST/<name>/")
    parser.add_argument("--write-digest", metavar="ARCHIVE", help="write ARCHIVE.sha256 for a local archive and exit")
    parser.add_argument("--termination-log", default=os.environ.get("TERMINATION_MESSAGE_PATH", "/dev/termination-log"),
                        help="where a failure's message is written too (Kubernetes shows it in the pod status)")
    args = parser.parse_args(argv)
    if args.write_digest:
        try:
            print(write_digest(args.write_digest))
        except FetchError as exc:
            print(f"fetch: error: {exc}", file=sys.stderr)
            return 1
        return 0
    if not args.source or not args.dest:
        parser.error("SOURCE and DEST are required (or --write-digest ARCHIVE)")
    try:
        local = fetch(args.source, args.dest, unpack=args.unpack)
    except FetchError as exc:
        message = f"model archive not delivered: {exc}"
        print(f"fetch: error: {message}", file=sys.stderr)
        try:
            Path(args.termination_log).write_text(message[-4000:])
        except OSError:
            pass
        return 1
    print(f"fetch: {args.source} -> {local} (sha256 verified)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
