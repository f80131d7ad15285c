"""The backbone + reflexive adapter: identity at start, only the adapter trains, safe storage."""
import numpy as np
import pytest
import torch

from model_handler.model import (AdapterError, ModelSpec, SelfHealingNet, adapter_from_bytes, adapter_sha256,
                                 adapter_to_bytes, load_model, model_hash, save_model)
from model_handler.training import train_backbone


@pytest.fixture(scope="module")
def trained():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 4)).astype(np.float32)
    x[:, 3] = np.exp(x[:, 3]) * 100  # a heavy-tailed, log-transformed feature
    y = (x[:, 0] + 0.5 * x[:, 1] > 0.3).astype(np.int64)
    model = train_backbone(x, y, ["a", "b", "c", "amount"], ["no", "yes"], log_features=["amount"], epochs=5)
    return model, x, y


def test_adapter_starts_as_identity_and_reset_restores_it(trained):
    model, x, _ = trained
    xt = torch.as_tensor(x)
    with torch.no_grad():
        bare = model.head(model.backbone(model.transform(xt)))
        assert torch.allclose(model(xt), bare, atol=1e-6)
        model.adapter.up.weight.add_(0.5)
        model.adapter.logit_bias.add_(1.0)
        assert not torch.allclose(model(xt), bare, atol=1e-3)
    model.reset_adapter()
    with torch.no_grad():
        assert torch.allclose(model(xt), bare, atol=1e-6)


def test_only_adapter_parameters_are_trainable(trained):
    model, _, _ = trained
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("adapter.") for n in trainable)


def test_trained_backbone_learns_and_records_reference_facts(trained):
    model, x, y = trained
    acc = (model.predict_proba(x).argmax(1).numpy() == y).mean()
    assert acc > 0.9
    assert np.isclose(sum(model.spec.train_prior), 1.0)
    assert np.array(model.spec.reference_quantiles).shape == (4, 19)


def test_save_and_load_round_trip_without_pickle(trained, tmp_path):
    model, x, _ = trained
    digest = save_model(model, tmp_path)
    assert digest == model_hash(tmp_path)
    assert not list(tmp_path.glob("*.pt")) and not list(tmp_path.glob("*.pkl"))
    loaded = load_model(tmp_path)
    assert torch.allclose(loaded.predict_proba(x), model.predict_proba(x), atol=1e-6)


def test_load_model_reports_missing_and_mismatched_files(trained, tmp_path):
    model, _, _ = trained
    with pytest.raises(FileNotFoundError, match="model.json"):
        load_model(tmp_path)
    save_model(model, tmp_path)
    other = SelfHealingNet(ModelSpec(features=["a", "b", "c", "amount"], classes=["no", "yes"], hidden=[8]))
    save_model(other, tmp_path / "other")
    (tmp_path / "model.safetensors").write_bytes((tmp_path / "other" / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match="does not match its spec"):
        load_model(tmp_path)


def test_adapter_bytes_round_trip_and_hash(trained):
    model, x, _ = trained
    with torch.no_grad():
        model.adapter.logit_bias.copy_(torch.tensor([0.3, -0.3]))
    data = adapter_to_bytes(model.adapter_state(), {"version": "v1"})
    assert len(data) < 64 * 1024  # an adapter is small
    assert len(adapter_sha256(data)) == 64
    clone = model.copy()
    clone.reset_adapter()
    clone.load_adapter_state(adapter_from_bytes(data))
    assert torch.allclose(clone.predict_proba(x), model.predict_proba(x))
    model.reset_adapter()


def test_corrupt_adapter_bytes_are_a_clear_error():
    with pytest.raises(AdapterError, match="not valid safetensors"):
        adapter_from_bytes(b"\x00\x01garbage")
    with pytest.raises(AdapterError, match="not valid safetensors"):
        adapter_from_bytes(b"")


def test_refused_adapters_leave_the_served_one_untouched(trained):
    model, x, _ = trained
    before = model.predict_proba(x)
    good = model.adapter_state()
    wrong_shape = dict(good, **{"logit_bias": torch.zeros(3)})
    with pytest.raises(AdapterError, match="logit_bias.*shape"):
        model.load_adapter_state(wrong_shape)
    non_finite = dict(good, **{"input_shift": torch.full_like(good["input_shift"], float("nan"))})
    with pytest.raises(AdapterError, match="non-finite"):
        model.load_adapter_state(non_finite)
    missing = {k: v for k, v in good.items() if k != "up.weight"}
    with pytest.raises(AdapterError, match="missing.*up.weight"):
        model.load_adapter_state(missing)
    extra = dict(good, evil=torch.zeros(1))
    with pytest.raises(AdapterError, match="unexpected.*evil"):
        model.load_adapter_state(extra)
    assert torch.equal(model.predict_proba(x), before)


def test_training_rejects_bad_inputs():
    x = np.zeros((100, 2), np.float32)
    with pytest.raises(ValueError, match="NaN or inf"):
        train_backbone(np.full((100, 2), np.nan, np.float32), np.zeros(100, np.int64), ["a", "b"], ["n", "y"])
    with pytest.raises(ValueError, match="matching labels"):
        train_backbone(x, np.zeros(99, np.int64), ["a", "b"], ["n", "y"])
    with pytest.raises(ValueError, match="unique"):
        ModelSpec(features=["a", "a"], classes=["n", "y"])
    with pytest.raises(ValueError, match="log_features"):
        ModelSpec(features=["a"], classes=["n", "y"], log_features=["b"])


def test_class_prior_is_optional_for_old_adapters_and_checked(trained):
    model, x, _ = trained
    before = model.predict_proba(x)
    old = {k: v for k, v in model.adapter_state().items() if k not in ("class_prior", "input_unit")}
    model.load_adapter_state(old)   # written before prior corrections and raw-space units were recorded
    assert not model.adapter.class_prior.any() and (model.adapter.input_unit == 1).all()
    assert np.allclose(model.served_prior(), model.spec.train_prior)
    for bad in ([0.7, 0.7], [-0.2, 1.2]):
        with pytest.raises(AdapterError, match="class_prior.*distribution"):
            model.load_adapter_state(dict(old, class_prior=torch.tensor(bad)))
    model.load_adapter_state(dict(old, class_prior=torch.tensor([0.8, 0.2])))
    assert np.allclose(model.served_prior(), [0.8, 0.2])
    assert torch.equal(model.predict_proba(x), before)   # a recorded prior changes no output
    model.adapter.reset()
