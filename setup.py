"""Which packages the wheel holds. Everything else about the project is in pyproject.toml.

By default all of them (development: `pip install -e '.[all]'`). An image installs only what it runs:
its Dockerfile names those packages in SELFHEAL_PACKAGES (e.g. `shm_operator,model_handler`), and a
named package whose directory is not in the build context stops the build with a message saying so,
instead of an image that fails at its first import.
"""
import os
from pathlib import Path

from setuptools import setup

# import name -> (directory, subpackages). The operator lives in operator/ but imports as
# shm_operator: the stdlib `operator` module is preloaded by Python, so a package named `operator`
# could never be imported.
PACKAGES = {
    "shm_operator": ("operator", []),
    "model_handler": ("model_handler", []),
    "sandbox": ("sandbox", []),
    "bench": ("bench", []),
    "fuzz": ("fuzz", []),
    "examples": ("examples", ["examples.fraud", "examples.datasets", "examples.quickstart"]),
}


def selected() -> list[str]:
    names = [n.strip() for n in os.environ.get("SELFHEAL_PACKAGES", "").split(",") if n.strip()]
    if not names:
        return list(PACKAGES)
    unknown = sorted(set(names) - set(PACKAGES))
    if unknown:
        raise SystemExit(f"SELFHEAL_PACKAGES names unknown packages {unknown}; known: {sorted(PACKAGES)}")
    return names


def main() -> None:
    here = Path(__file__).resolve().parent
    names = selected()
    missing = [f"{n} (directory {PACKAGES[n][0]}/)" for n in names if not (here / PACKAGES[n][0] / "__init__.py").is_file()]
    if missing:
        raise SystemExit(f"package source not in the build context: {', '.join(missing)}; copy it in "
                         "(Dockerfile COPY and its .dockerignore) or leave it out of SELFHEAL_PACKAGES")
    packages = [p for n in names for p in [n, *PACKAGES[n][1]]]
    package_dir = {n: PACKAGES[n][0] for n in names}
    setup(packages=packages, package_dir=package_dir)


main()
