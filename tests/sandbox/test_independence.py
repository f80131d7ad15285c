"""`sandbox/` is infrastructure: it depends on nothing of selfheal (no module of it imports the
operator, the model handler, the examples or the benchmarks), so the same sandbox serves any
operator. selfheal's own harness on top of it lives in `examples/cluster.py`."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SANDBOX = Path(__file__).resolve().parents[2] / "sandbox"
SELFHEAL = ("shm_operator", "model_handler", "examples", "bench", "fuzz")


def imported_names(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_no_module_in_sandbox_imports_selfheal():
    offending = {path.name: sorted(n for n in imported_names(path) if n.split(".")[0] in SELFHEAL)
                 for path in sorted(SANDBOX.glob("*.py"))}
    assert {name: found for name, found in offending.items() if found} == {}
    assert not (SANDBOX / "demo.py").exists(), "the demo is an application: it lives in examples/"


def test_importing_every_sandbox_module_loads_nothing_of_selfheal():
    modules = [f"sandbox.{p.stem}" for p in sorted(SANDBOX.glob("*.py")) if p.stem != "__main__"]
    code = ("import importlib, sys\n"
            f"for name in {modules!r}: importlib.import_module(name)\n"
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {SELFHEAL!r}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={"PYTHONSAFEPATH": "1", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"
