"""Any torch model (`model.factory`), its structure as the swarm's model identity, the
1-logit binary head and the training device."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from consensus.genesis import TrainingParams
from models.data import load_dataset
from models.device import DeviceError, check_amp, resolve_device
from models.flatten import flatten, spec_layout
from models.nets import build_model, build_network
from models.spec import ModelSpec, SpecError, factory_model, mlp
from models.structure import StructureMismatch, check_structure, spec_structure, structure_of
from models.training import LocalTrainer, TrainConfig, class_probabilities, classification_loss

FACTORIES = """
import torch
from torch import nn

def wide_then_narrow(n_features, n_classes):
    return nn.Sequential(
        nn.Linear(n_features, 8, bias=False), nn.ReLU(), nn.Linear(8, 2, bias=False), nn.ReLU(),
        nn.Linear(2, n_classes, bias=False),
    )

def one_logit(n_features, n_classes):
    return nn.Sequential(nn.Linear(n_features, 16), nn.ReLU(), nn.Linear(16, 1))

def not_a_module(n_features, n_classes):
    return "a string"
"""


@pytest.fixture
def factories(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An importable module of model factories; returns its name."""
    (tmp_path / "user_models.py").write_text(textwrap.dedent(FACTORIES))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "user_models"


def test_factory_spec_round_trips_and_leaves_builtin_spec_bytes_unchanged() -> None:
    spec = factory_model("user_models:wide_then_narrow", n_features=30, n_classes=2)
    assert ModelSpec.from_canonical_bytes(spec.canonical_bytes()) == spec
    assert b'"factory":"user_models:wide_then_narrow"' in spec.canonical_bytes()
    # the optional keys appear only when set: every existing genesis hash stays valid
    assert b"factory" not in mlp(30, 2).canonical_bytes()
    assert b"binary_head" not in mlp(30, 2).canonical_bytes()
    head = mlp(30, 2, hidden=(8,))
    binary = ModelSpec(kind="mlp", n_features=30, n_classes=2, hidden=(8,), binary_head=True)
    assert binary.spec_hash() != head.spec_hash()
    assert ModelSpec.from_canonical_bytes(binary.canonical_bytes()) == binary


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"kind": "factory", "factory": "no colon"}, "package.module:function"),
        ({"kind": "factory", "factory": "m:f", "hidden": (4,)}, "its function builds it"),
        ({"kind": "mlp", "hidden": (4,), "factory": "m:f"}, "only for kind 'factory'"),
        ({"kind": "mlp", "hidden": (4,), "binary_head": True, "n_classes": 3}, "binary_head needs"),
    ],
)
def test_invalid_factory_and_binary_head_specs_are_refused(fields: dict[str, object], message: str) -> None:
    values: dict[str, object] = {"n_features": 4, "n_classes": 2} | fields
    with pytest.raises(SpecError, match=message):
        ModelSpec(**values)  # type: ignore[arg-type]


def test_factory_model_is_built_reproducibly_without_touching_the_global_rng(factories: str) -> None:
    spec = factory_model(f"{factories}:wide_then_narrow", n_features=5, n_classes=3)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = build_network(spec, torch.Generator().manual_seed(7))
    assert torch.equal(torch.get_rng_state(), before)
    b = build_network(spec, torch.Generator().manual_seed(7))
    c = build_network(spec, torch.Generator().manual_seed(8))
    assert np.array_equal(flatten(a, spec), flatten(b, spec))
    assert not np.array_equal(flatten(a, spec), flatten(c, spec))
    assert spec_layout(spec).size == 5 * 8 + 8 * 2 + 2 * 3
    with pytest.raises(SpecError, match="build_network"):
        build_model(spec, torch.Generator())


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        ("no_such_module_here:f", "cannot import 'no_such_module_here'"),
        ("user_models:missing", "has no 'missing'"),
        ("user_models:not_a_module", "returned str, not a torch module"),
    ],
)
def test_a_factory_that_cannot_be_used_is_refused_by_name(factories: str, factory: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        build_network(factory_model(factory, 4, 2), torch.Generator())


def test_wrong_structure_with_equal_parameter_count_is_refused_naming_the_differences(factories: str) -> None:
    agreed = factory_model(f"{factories}:wide_then_narrow", n_features=4, n_classes=8)
    other = nn.Sequential(
        nn.Linear(4, 4, bias=False), nn.ReLU(), nn.Linear(4, 4, bias=False), nn.ReLU(),
        nn.Linear(4, 8, bias=False),
    )  # fmt: skip
    expected = spec_structure(agreed)
    assert spec_layout(agreed).size == sum(p.numel() for p in other.parameters())  # the count cannot tell
    with pytest.raises(StructureMismatch) as caught:
        check_structure(expected, structure_of(other), "site-2: the model offered to merge()")
    message = str(caught.value)
    assert message.startswith("site-2: the model offered to merge()")
    assert "0.weight: [4, 4] float32, agreed [8, 4] float32" in message
    assert "2.weight: [4, 4] float32, agreed [2, 8] float32" in message
    assert "4.weight: [8, 4] float32, agreed [8, 2] float32" in message
    check_structure(expected, structure_of(build_network(agreed, torch.Generator())), "same")


def test_structure_names_missing_unexpected_dtype_and_order_differences() -> None:
    base = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    expected = structure_of(base)
    assert expected[-1].name == "1.num_batches_tracked"
    assert expected[-1].dtype == "int64"
    doubled = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2)).double()
    with pytest.raises(StructureMismatch, match=r"0\.weight: \[2, 3\] float64, agreed \[2, 3\] float32"):
        check_structure(expected, structure_of(doubled), "x")
    with pytest.raises(StructureMismatch, match=r"missing 1\.running_var \[2\] float32"):
        check_structure(expected, structure_of(nn.Sequential(nn.Linear(3, 2), nn.LayerNorm(2))), "x")
    reordered = tuple(reversed(expected))
    with pytest.raises(StructureMismatch, match="tensor order differs"):
        check_structure(expected, reordered, "x")


def test_genesis_records_the_structure_in_strict_cbor() -> None:
    spec = mlp(4, 2, hidden=(3,), batch_norm=True)
    params = TrainingParams(model_spec_hash=spec.spec_hash(), model_structure=spec_structure(spec))
    from crypto import cbor

    decoded = cbor.loads_dataclass(TrainingParams, cbor.dumps_dataclass(params))
    assert decoded.model_structure == params.model_structure
    assert [t.name for t in decoded.model_structure][:2] == ["head.0.weight", "head.0.bias"]
    twice = params.model_structure + params.model_structure[:1]
    with pytest.raises(ValueError, match=r"training.model_structure: a tensor name is listed twice"):
        TrainingParams(model_spec_hash=spec.spec_hash(), model_structure=twice)


def test_binary_head_trains_with_bce_and_reports_two_class_metrics() -> None:
    data = load_dataset("breast_cancer")
    spec = ModelSpec(kind="mlp", n_features=data.n_features, n_classes=2, hidden=(8,), binary_head=True)
    config = TrainConfig(epochs=3, device="cpu")
    trainer = LocalTrainer(spec, data, config, generator=torch.Generator().manual_seed(1))
    assert trainer.model(torch.zeros(2, data.n_features)).shape == (2, 1)
    result = trainer.fit()
    assert result.validation is not None
    assert result.validation.roc_auc > 0.9
    logits = torch.tensor([[0.0], [2.0]])
    assert torch.allclose(class_probabilities(logits, 2)[:, 1], torch.sigmoid(logits[:, 0]).double())
    labels = torch.tensor([0, 1])
    expected = nn.functional.binary_cross_entropy_with_logits(logits[:, 0], labels.float())
    assert torch.equal(classification_loss(logits, labels), expected)
    with pytest.raises(ValueError, match=r"expected \(rows, 3\)"):
        class_probabilities(logits, 3)


def test_binary_head_factory_model_trains(factories: str) -> None:
    data = load_dataset("breast_cancer")
    spec = factory_model(f"{factories}:one_logit", data.n_features, 2)
    trainer = LocalTrainer(spec, data, TrainConfig(epochs=2), generator=torch.Generator().manual_seed(1))
    result = trainer.fit()
    assert result.validation is not None
    assert result.validation.accuracy > 0.8


def test_device_auto_picks_cuda_then_mps_then_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    def available(cuda: bool, mps: bool) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)

    available(True, True)
    assert resolve_device("auto").type == "cuda"
    available(False, True)
    assert resolve_device("auto").type == "mps"
    assert resolve_device("mps").type == "mps"
    available(False, False)
    assert resolve_device("auto").type == "cpu"
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(DeviceError, match=r"training.device = 'cuda', but this torch .* sees no CUDA"):
        resolve_device("cuda")
    with pytest.raises(DeviceError, match="sees no MPS"):
        resolve_device("mps")
    with pytest.raises(DeviceError, match="must be one of auto, cpu, cuda, mps"):
        resolve_device("tpu")


def test_amp_is_refused_off_cuda_and_allowed_on_it(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DeviceError, match=r"training.amp = true needs a CUDA device"):
        check_amp(True, torch.device("cpu"))
    check_amp(True, torch.device("cuda"))
    check_amp(False, torch.device("cpu"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match=r"training.amp"):
        LocalTrainer(
            mlp(30, 2, hidden=(4,)), load_dataset("breast_cancer"), TrainConfig(amp=True),
            generator=torch.Generator(),
        )  # fmt: skip
