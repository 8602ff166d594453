"""Models from specs and the flat float32 parameter vector."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.flatten import LayoutMismatch, flatten, layout_of, spec_layout, unflatten
from models.nets import SeededDropout, build_model
from models.spec import ModelSpec, logistic_regression, mlp, small_cnn

SPECS = [
    logistic_regression(30, 2),
    mlp(30, 3, hidden=(16, 8), dropout=0.3, batch_norm=True),
    small_cnn((1, 8, 8), 10, conv_channels=(4, 8), hidden=(16,), dropout=0.1, batch_norm=True),
]


def _trained_a_bit(spec: ModelSpec, seed: int) -> torch.nn.Module:
    """A model whose parameters and batch-norm buffers are no longer at their init values."""
    g = torch.Generator().manual_seed(seed)
    model = build_model(spec, g)
    x = torch.randn(16, spec.n_features, generator=g)
    y = torch.randint(0, spec.n_classes, (16,), generator=g)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()  # type: ignore[no-untyped-call]
        opt.step()
    return model


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.kind)
def test_flatten_unflatten_round_trip_is_bit_exact(spec: ModelSpec) -> None:
    source = _trained_a_bit(spec, seed=1)
    vector = flatten(source)
    assert vector.dtype == np.float32
    assert vector.shape == (spec_layout(spec).size,)
    target = build_model(spec, torch.Generator().manual_seed(2))
    assert not np.array_equal(flatten(target), vector)
    unflatten(target, vector)
    assert np.array_equal(flatten(target), vector)
    # Every float tensor, buffers included, is restored exactly; and the networks agree.
    for (name, a), b in zip(source.state_dict().items(), target.state_dict().values(), strict=True):
        if a.is_floating_point():
            assert torch.equal(a, b), name
    source.eval()
    target.eval()
    x = torch.randn(5, spec.n_features, generator=torch.Generator().manual_seed(3))
    assert torch.equal(source(x), target(x))


def test_layout_contains_batch_norm_running_stats_but_not_counters() -> None:
    layout = spec_layout(SPECS[1])
    names = [s.name for s in layout.slots]
    assert any(n.endswith("running_mean") for n in names)
    assert any(n.endswith("running_var") for n in names)
    assert not any(n.endswith("num_batches_tracked") for n in names)
    assert {s.kind for s in layout.slots} == {"parameter", "buffer"}
    # Slots tile the vector without gaps.
    offset = 0
    for slot in layout.slots:
        assert slot.offset == offset
        offset += slot.size
    assert offset == layout.size


def test_build_is_deterministic_and_leaves_global_rng_alone() -> None:
    before = torch.random.get_rng_state()
    a = flatten(build_model(SPECS[2], torch.Generator().manual_seed(7)))
    b = flatten(build_model(SPECS[2], torch.Generator().manual_seed(7)))
    c = flatten(build_model(SPECS[2], torch.Generator().manual_seed(8)))
    assert torch.equal(before, torch.random.get_rng_state())
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_unflatten_refuses_wrong_spec_length_dtype_and_non_finite_values() -> None:
    spec = SPECS[1]
    model = build_model(spec, torch.Generator().manual_seed(0))
    vector = flatten(model)
    with pytest.raises(LayoutMismatch, match="built from"):
        unflatten(model, vector, mlp(30, 3, hidden=(16, 9), dropout=0.3, batch_norm=True))
    other = build_model(logistic_regression(30, 3), torch.Generator().manual_seed(0))
    with pytest.raises(LayoutMismatch, match="layout mismatch"):
        unflatten(other, vector, layout_of(model))
    with pytest.raises(LayoutMismatch, match="shape"):
        unflatten(model, vector[:-1])
    with pytest.raises(TypeError, match="float32"):
        unflatten(model, vector.astype(np.float64))
    broken = vector.copy()
    broken[-1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        unflatten(model, broken)
    # A refused vector leaves the model unchanged.
    assert np.array_equal(flatten(model), vector)


def test_plain_modules_need_an_explicit_layout() -> None:
    plain = torch.nn.Linear(3, 2)
    with pytest.raises(LayoutMismatch, match="explicit"):
        flatten(plain)
    vector = flatten(plain, layout_of(plain))
    assert vector.shape == (8,)


def test_seeded_dropout_needs_a_generator_in_training_mode_only() -> None:
    layer = SeededDropout(0.5)
    x = torch.ones(4, 6)
    layer.eval()
    assert torch.equal(layer(x), x)
    layer.train()
    with pytest.raises(RuntimeError, match="generator"):
        layer(x)
    layer.generator = torch.Generator().manual_seed(0)
    first = layer(x)
    layer.generator = torch.Generator().manual_seed(0)
    assert torch.equal(first, layer(x))
    assert set(first.unique().tolist()) <= {0.0, 2.0}
