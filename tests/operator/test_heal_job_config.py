"""The heal Job reads its config from a mounted file, a ConfigMap of the Job's own, not from argv.

The CRD allows 256 rules of 2,000 characters each; the old `--config-json` put all of them in one
argument, and Linux refuses any single argument over MAX_ARG_STRLEN (128 KiB) with E2BIG, so a valid
spec gave a Job that could not start. Here: the rendered Job and ConfigMap of the largest valid spec
(unit), the config keys the Job takes (the config dataclasses' own fields), and that spec's Job run
through the sandbox, whose process kubelet execs the Job's argv like a node would (end to end)."""
from __future__ import annotations

import copy
import dataclasses
import errno
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from model_handler import heal
from model_handler.gate import GateConfig
from model_handler.healing import HealConfig
from model_handler.rules import MAX_EXPRESSION_CHARS, RuleSet
from shm_operator import children, crd, decisions

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "fraud" / "selfhealingmodel.yaml"
MAX_ARG_STRLEN = 32 * 4096          # Linux: PAGE_SIZE * 32, the most one argv string may hold
MAX_RULES = 256                     # crd.SelfHealingModelSpec.rules max_length
LONGEST_NAME = 63                   # crd.CLASS_NAME: rule names and class names
MAX_CONFIG_MAP_BYTES = 1024 * 1024  # the API server's limit on a ConfigMap's data (corev1.MaxConfigMapSize)


def long_when(i: int, features: list[str]) -> str:
    """A rule condition of exactly MAX_EXPRESSION_CHARS characters that parses (and stays within
    the rule language's nesting and depth limits)."""
    clauses, n = [], 0
    while True:
        clause = (f"({features[n % len(features)]} > {i}.{n:04d} and "
                  f"{features[(n + 3) % len(features)]} <= {n * 7 + i}.5)")
        if len(" or ".join([*clauses, clause])) > MAX_EXPRESSION_CHARS - 20:
            break
        clauses.append(clause)
        n += 1
    text = " or ".join(clauses) + f" or {features[0]} > "
    return text + "9" * (MAX_EXPRESSION_CHARS - len(text))


def largest_spec(classes: list[str] | None = None) -> dict:
    """The example spec with as much rule text as the CRD allows: 256 rules, each with a 63-character
    name, a 2,000-character condition, the longest label the classes allow, a weight of the longest
    float repr and the longer kind."""
    spec = yaml.safe_load(EXAMPLE.read_text())["spec"]
    if classes:
        spec["classes"] = classes
    label = max(spec["classes"], key=len)
    spec["rules"] = [{"name": f"rule-{i:03d}-".ljust(LONGEST_NAME, "x"), "when": long_when(i, spec["features"]),
                      "label": label, "weight": 2.2250738585072014e-308 if classes else 1.0, "kind": "definition"}
                     for i in range(MAX_RULES)]
    return spec


def rendered(spec: dict, namespace: str = "models", job_name: str = "fraud-heal-1") -> tuple[dict, dict, dict]:
    """(config, Job, ConfigMap) as the operator renders them (healing.maybe_heal); the ConfigMap
    owned by the Job as the API server stored it."""
    config = crd.SelfHealingModelSpec.model_validate(spec).heal_job_config()
    job = children.heal_job("fraud", namespace, spec, job_name=job_name, parent="base", version="v1", config=config)
    stored = copy.deepcopy(job)
    stored["metadata"]["uid"] = "5f0c6a2e-0000-4000-8000-000000000001"
    return config, job, children.heal_config_map(stored, config)


def argv_of(job: dict) -> list[str]:
    container = job["spec"]["template"]["spec"]["containers"][0]
    return [*container["command"], *container["args"]]


def old_argument(config: dict) -> str:
    """What `--config-json` passed before: the whole config as one argument."""
    return json.dumps(config, sort_keys=True, separators=(",", ":"))


@pytest.fixture(scope="module")
def largest():
    return largest_spec(classes=["c" * (LONGEST_NAME - 1) + "0", "c" * (LONGEST_NAME - 1) + "1"])


def test_the_largest_valid_spec_is_valid(largest):
    spec = crd.SelfHealingModelSpec.model_validate(largest)
    assert len(spec.rules) == MAX_RULES and all(len(r.when) == MAX_EXPRESSION_CHARS for r in spec.rules)
    assert decisions.validate_spec_semantics(largest) == []   # every rule parses: the operator would heal


def test_the_job_carries_the_full_config_in_its_configmap_and_a_small_argv(largest):
    config, job, config_map = rendered(largest)
    old = old_argument(config)
    # Measured: 566,545 bytes in one argument, 4.3 times MAX_ARG_STRLEN (131,072); argv now: 316 bytes.
    assert len(old.encode()) > MAX_ARG_STRLEN, f"the old --config-json argument is only {len(old)} bytes"

    argv = argv_of(job)
    assert "--config-json" not in argv and not any(a.startswith("{") for a in argv)
    assert max(len(a.encode()) for a in argv) < 100 and sum(len(a.encode()) + 1 for a in argv) < 1024, \
        f"argv is {sum(len(a) + 1 for a in argv)} bytes, the old one {len(old)}"

    # the file the Job is told to read is the ConfigMap's key, mounted read-only
    pod = job["spec"]["template"]["spec"]
    path = argv[argv.index("--config") + 1]
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if path.startswith(m["mountPath"] + "/")]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert mount["readOnly"] is True and volume["configMap"]["name"] == config_map["metadata"]["name"]
    text = config_map["data"][path[len(mount["mountPath"]) + 1:]]
    assert json.loads(text) == config
    assert hashlib.sha256(text.encode()).hexdigest() == argv[argv.index("--config-sha256") + 1]

    # owned by its Job (deleted with it), named after it, well under a ConfigMap's 1 MiB
    assert config_map["metadata"]["name"] == "fraud-heal-1-config"
    (owner,) = config_map["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("Job", "fraud-heal-1", "5f0c6a2e-0000-4000-8000-000000000001")
    size = sum(len(k.encode()) + len(v.encode()) for k, v in config_map["data"].items())
    # Measured: 566,556 bytes, 54% of the 1,048,576 a ConfigMap may hold (the object: 571,579 as JSON).
    assert size < MAX_CONFIG_MAP_BYTES * 0.6, f"the largest valid spec renders to {size} bytes"


def test_whitespace_in_rules_cannot_push_the_config_over_the_limit(largest):
    """A rule's whitespace runs become one space in the config: a condition padded with vertical
    tabs (each one 6 bytes as JSON) stays small, and means the same (RuleSet.hash counts no spacing)."""
    padded = copy.deepcopy(largest)
    for rule in padded["rules"]:
        rule["when"] = "amount >\v\t" + "\v" * (MAX_EXPRESSION_CHARS - 12) + "\n1"
    assert decisions.validate_spec_semantics(padded) == []
    config, _, config_map = rendered(padded)
    assert all(rule["when"] == "amount > 1" for rule in config["rules"])
    assert len(config_map["data"]["config.json"]) < len(old_argument(rendered(largest)[0]))
    args = (padded["features"], padded["classes"])
    assert RuleSet.from_dicts(config["rules"], *args).hash() == RuleSet.from_dicts(padded["rules"], *args).hash()


def test_the_old_argument_is_refused_by_the_kernel(largest):
    """What the old Job did: exec with the config as one argument. Linux refuses it (E2BIG)."""
    old = old_argument(rendered(largest)[0])
    with pytest.raises(OSError) as refused:
        subprocess.run([sys.executable, "-c", "pass", "--config-json", old], check=False)
    assert refused.value.errno == errno.E2BIG, f"{len(old)}-byte argument: {refused.value}"


# ---- the config keys: the dataclasses' own fields ------------------------------------------------

def changed(value):
    return not value if isinstance(value, bool) else value + 1


def test_every_heal_and_gate_field_is_a_config_key():
    heal_fields = [f for f in dataclasses.fields(HealConfig) if f.name != "gate"]
    config = {"healing": {heal.camel(f.name): changed(f.default) for f in heal_fields},
              "promotion": {heal.camel(f.name): changed(f.default) for f in dataclasses.fields(GateConfig)}}
    heal_config, _ = heal.configs(config)
    for f in heal_fields:
        assert getattr(heal_config, f.name) == changed(f.default), f.name
    for f in dataclasses.fields(GateConfig):
        assert getattr(heal_config.gate, f.name) == changed(f.default), f.name


def test_a_new_config_field_needs_no_change_in_the_job(monkeypatch):
    @dataclasses.dataclass
    class NewerGate(GateConfig):
        max_new_signal: float = 0.5

    monkeypatch.setattr(heal, "GateConfig", NewerGate)
    heal_config, rows = heal.configs({"healing": {"trainingWindowRows": 900}, "promotion": {"maxNewSignal": 0.25}})
    assert heal_config.gate.max_new_signal == 0.25 and rows == 900


def test_the_spec_config_is_read_whole():
    """Every key the operator writes from the spec is taken (no 'unknown config keys')."""
    resource = yaml.safe_load(EXAMPLE.read_text())
    config = crd.SelfHealingModel.model_validate(resource).spec.heal_job_config()
    heal_config, rows = heal.configs(config)
    assert heal_config.min_rows == config["healing"]["minRows"] and rows == config["healing"]["trainingWindowRows"]
    assert heal_config.gate.max_disagreement == config["promotion"]["maxDisagreement"]


def test_the_job_waits_for_rows_as_long_as_the_spec_says():
    resource = yaml.safe_load(EXAMPLE.read_text())
    resource["spec"].setdefault("healing", {})["waitForRowsSeconds"] = 75
    config = crd.SelfHealingModel.model_validate(resource).spec.heal_job_config()
    heal.configs(config)   # a key the Job knows, not a HealConfig field
    assert heal.wait_for_rows(config) == 75.0
    assert heal.wait_for_rows(config, override=5) == 5.0          # --wait-for-rows wins
    assert heal.wait_for_rows({}) == heal.DEFAULT_WAIT_SECONDS   # a Job run by hand without a config


def test_an_unknown_key_is_an_error_that_names_it():
    with pytest.raises(ValueError, match=r"unknown config keys: healing\.ruleWieght \(HealConfig takes .*ruleWeight"):
        heal.configs({"healing": {"ruleWieght": 3.0}})
    with pytest.raises(ValueError, match=r"promotion\.gate"):
        heal.configs({"promotion": {"gate": {}}})
    with pytest.raises(ValueError, match=r"healing\.gate"):   # the nested config has its own section
        heal.configs({"healing": {"gate": {}}})


def test_a_config_file_other_than_the_one_named_fails_the_job(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"healing": {"minRows": 300}}')
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert heal.read_config(str(path), digest) == {"healing": {"minRows": 300}}
    path.write_text('{"healing": {"minRows": 301}}')
    with pytest.raises(ValueError, match="ConfigMap changed since"):
        heal.read_config(str(path), digest)
    (tmp_path / "config.yaml").write_text("healing:\n  minRows: 250\n")   # YAML by hand still reads
    assert heal.read_config(str(tmp_path / "config.yaml")) == {"healing": {"minRows": 250}}


# ---- end to end: the Job of the largest spec on the sandbox ------------------------------------

@pytest.mark.timeout(300)
def test_the_largest_valid_spec_heal_job_starts_and_reads_its_config(sandbox, namespace, model_dir, tmp_path):
    from examples.fraud.generator import World, sample
    from model_handler.traffic import TrafficStore
    from sandbox_helpers import wait_until

    storage = tmp_path / "storage"
    storage.mkdir()   # a missing local root is an unmounted volume, not an empty store
    rows = 400
    data = sample(np.random.default_rng(0), rows, World())
    TrafficStore(storage.as_uri(), namespace, "fraud", writer_id="pod-a").write_shard(data.x, np.zeros((rows, 2)))
    spec = largest_spec()
    spec["model"]["archive"] = str(model_dir)
    spec["storage"] = {"uri": storage.as_uri()}
    # a window the default (3,000 rows) would not give: the Job reads 200 of the 400 rows only
    # if it read trainingWindowRows from its config file
    spec["healing"] = {**spec.get("healing", {}), "trainingWindowRows": 200, "minRows": 200}

    # The resource itself is valid for the CRD (the sandbox validates it). `create`, not `apply`:
    # apply's last-applied annotation would pass the API's 256 KiB limit on annotations.
    resource = {"apiVersion": "selfheal.io/v1alpha1", "kind": "SelfHealingModel",
                "metadata": {"name": "fraud", "namespace": namespace}, "spec": spec}
    sandbox.kubectl("create", "-f", "-", input=json.dumps(resource))
    stored = sandbox.get("shm", "fraud", "-n", namespace)
    assert len(stored["spec"]["rules"]) == MAX_RULES
    # what the operator passes the Job: the spec with the CRD's defaults, as the API server stored it
    config = crd.SelfHealingModelSpec.model_validate(stored["spec"]).heal_job_config()
    assert len(old_argument(config).encode()) > MAX_ARG_STRLEN

    # as healing.maybe_heal does: the Job first, then its ConfigMap, owned by the stored Job (the
    # pod waits for it, like a kubelet for any volume)
    job = children.heal_job("fraud", namespace, stored["spec"], job_name="fraud-heal-1", parent="base", version="v1", config=config)
    sandbox.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(job))
    job = sandbox.get("job", "fraud-heal-1", "-n", namespace)
    sandbox.kubectl("create", "-n", namespace, "-f", "-",
                    input=json.dumps(children.heal_config_map(job, config)))

    def finished():
        conditions = (sandbox.get("job", "fraud-heal-1", "-n", namespace).get("status") or {}).get("conditions")
        return any(c["type"] in ("Complete", "Failed") and c["status"] == "True" for c in conditions or [])

    wait_until(finished, timeout=240, interval=1.0, what="the heal Job to finish")
    (pod,) = sandbox.get("pods", "-n", namespace, "-l", "job-name=fraud-heal-1")["items"]
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    result = json.loads(terminated["message"])
    print(f"heal Job of the largest spec: {result}")
    assert terminated["exitCode"] == 0 and "error" not in result, result
    assert result["rows"] == 200, f"the Job did not take trainingWindowRows from its config: {result}"
    assert sandbox.get("job", "fraud-heal-1", "-n", namespace)["status"].get("succeeded") == 1

    # the ConfigMap goes with its Job
    sandbox.kubectl("delete", "job", "fraud-heal-1", "-n", namespace)
    wait_until(lambda: not sandbox.get("configmaps", "-n", namespace, "-l",
                                       f"{children.COMPONENT_LABEL}=heal-config")["items"],
               timeout=30, what="the Job's ConfigMap to be collected with it")
