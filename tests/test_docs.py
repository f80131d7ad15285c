"""The docs as files: every link stays inside the repository and names a file that exists, the
LICENSE is the one the packages declare."""
from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)\s]+)\)")                # [text](target)
RELATIVE_CODE_PATH = re.compile(r"`(\.\.?/[^`\s]+)`")  # `../docs/x.md` written as code


def markdown_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.md"], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    return [REPO_ROOT / line for line in out.stdout.splitlines()]


def local_targets(text: str) -> list[str]:
    links = [t for t in LINK.findall(text) if not re.match(r"[a-z]+:|#", t)]
    return [t.split("#")[0] for t in links + RELATIVE_CODE_PATH.findall(text) if t.split("#")[0]]


def test_docs_link_only_to_files_inside_the_repository():
    files = markdown_files()
    assert REPO_ROOT / "docs" / "architecture.md" in files
    broken = []
    for md in files:
        for target in local_targets(md.read_text()):
            resolved = (md.parent / target).resolve()
            if not resolved.is_relative_to(REPO_ROOT) or not resolved.exists():
                broken.append(f"{md.relative_to(REPO_ROOT)}: {target}")
    assert broken == []


def test_the_link_check_can_fail():
    assert local_targets("see [the contracts](../shared/ARCHITECTURE.md) and `../shared/STYLE.md`, "
                         "[home](https://example.com), [below](#usage)") == [
        "../shared/ARCHITECTURE.md", "../shared/STYLE.md"]


def test_the_license_is_the_one_the_packages_declare():
    text = (REPO_ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == {"text": "Apache-2.0"}
    chart = yaml.safe_load((REPO_ROOT / "charts" / "selfheal" / "Chart.yaml").read_text())
    assert chart["annotations"]["artifacthub.io/license"] == "Apache-2.0"


def test_the_readme_summarises_the_benchmarks_with_figures_from_docs_benchmarks():
    """The README leads with what selfheal is, install and use; its benchmark summary quotes only
    figures that docs/benchmarks.md holds, and links there."""
    readme = (REPO_ROOT / "README.md").read_text()
    benchmarks = (REPO_ROOT / "docs" / "benchmarks.md").read_text()
    headings = re.findall(r"^## (.+)$", readme, re.M)
    assert headings.index("Install on a cluster") < headings.index("How it works") < \
        headings.index("Benchmarks and reliability")
    summary = readme.split("\n## Benchmarks and reliability\n", 1)[1].split("\n## ", 1)[0]
    assert "[docs/benchmarks.md](docs/benchmarks.md)" in summary
    figures = re.findall(r"-?\d+(?:[.,]\d+)+(?:%| s\b|x\b| MiB\b)?|-?\d+%", summary)
    assert len(figures) >= 10
    assert [f for f in figures if f not in benchmarks] == []
    for table in ("| case | requests | failed | p99 ms | recovered |", "| scenario | metric | none | oracle |",
                  "| N | operator API calls/min | per model |"):
        assert table in benchmarks and table not in readme
