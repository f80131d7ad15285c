"""docs/quickstart.md's shell blocks, as the real-cluster test runs them and tests/test_quickstart.py
checks them.

Each block the quickstart wants run is a fenced ```bash block right after a marker line
`<!-- quickstart:step NAME -->` (or `<!-- quickstart:step NAME background -->` for a block the doc
runs in a second terminal: it keeps running until stopped). `Shell` runs blocks as a user's
terminal would: in order, each in `bash -euo pipefail`, with the variables exported by the blocks
before it (so `export` and `source .venv/bin/activate` carry over, as in one terminal).
"""
from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DOC = REPO_ROOT / "docs" / "quickstart.md"
MARKER = re.compile(r"^<!-- quickstart:step (?P<name>[a-z][a-z0-9-]*)(?P<background> background)? -->\n"
                    r"```bash\n(?P<code>.*?)^```$", re.S | re.M)
ANY_MARKER = re.compile(r"^<!--\s*quickstart:", re.M)


@dataclass(frozen=True)
class Step:
    name: str
    background: bool
    code: str


def steps(text: str | None = None) -> list[Step]:
    """The marked blocks, in document order. A marker not followed by a bash block, or a name used
    twice, is an error: the test must not silently skip a step."""
    text = DOC.read_text() if text is None else text
    found = [Step(m["name"], bool(m["background"]), m["code"]) for m in MARKER.finditer(text)]
    markers = len(ANY_MARKER.findall(text))
    if markers != len(found):
        raise ValueError(f"{markers} quickstart markers but {len(found)} of them precede a ```bash block")
    names = [s.name for s in found]
    if len(set(names)) != len(names):
        raise ValueError(f"a quickstart step name is used twice: {names}")
    return found


class Shell:
    """Runs quickstart blocks in `cwd` like one terminal: exported variables carry over."""

    def __init__(self, workdir: Path, cwd: Path = REPO_ROOT, env: dict[str, str] | None = None):
        self.workdir, self.cwd = Path(workdir), Path(cwd)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.state = self.workdir / "exported.sh"
        self.state.write_text("")
        self.env = {**os.environ, **(env or {})}
        self.background: dict[str, subprocess.Popen] = {}

    def _script(self, step: Step, overrides: dict[str, str], save: bool) -> Path:
        script = self.workdir / f"{step.name}.sh"
        lines = [f"source {self.state}", "set -euo pipefail", step.code]
        if overrides:   # the test's own values, after the block that defines them
            lines += [f"export {k}={shlex.quote(v)}" for k, v in overrides.items()]
        if save:
            lines.append(f"export -p > {self.state}.next && mv {self.state}.next {self.state}")
        script.write_text("\n".join(lines) + "\n")
        return script

    def run(self, step: Step, timeout: float = 1800, overrides: dict[str, str] | None = None) -> str:
        """Run a foreground block; returns its output, raises with the output when it fails."""
        assert not step.background, step.name
        script = self._script(step, overrides or {}, save=True)
        log = self.workdir / f"{step.name}.log"
        with open(log, "wb") as out:
            code = subprocess.run(["bash", str(script)], cwd=self.cwd, env=self.env, stdout=out,
                                  stderr=subprocess.STDOUT, timeout=timeout).returncode
        output = log.read_text(errors="replace")
        if code != 0:
            raise AssertionError(f"quickstart step {step.name!r} exited {code}:\n{step.code}\n--- output ---\n"
                                 f"{output[-6000:]}")
        return output

    def start(self, step: Step) -> subprocess.Popen:
        """Start a second-terminal block; it runs until `stop_all` (Ctrl-C, as the doc says)."""
        assert step.background, step.name
        script = self._script(step, {}, save=False)
        log = open(self.workdir / f"{step.name}.log", "wb")
        process = subprocess.Popen(["bash", str(script)], cwd=self.cwd, env=self.env, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.background[step.name] = process
        return process

    def log(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop_all(self) -> None:
        for name, process in reversed(list(self.background.items())):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGINT)   # Ctrl-C in that terminal
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
