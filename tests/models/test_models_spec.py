"""Model spec: validation, canonical bytes and the genesis hash."""

from __future__ import annotations

import hashlib
import inspect
import json

import pytest

from models.spec import SPEC_FORMAT, ModelSpec, SpecError, logistic_regression, mlp, small_cnn


def test_canonical_bytes_are_sorted_compact_json_and_hash_is_their_sha256() -> None:
    spec = mlp(30, 2, hidden=(64, 32), dropout=0.1)
    raw = spec.canonical_bytes()
    decoded = json.loads(raw)
    assert list(decoded) == sorted(decoded)
    assert b" " not in raw
    assert decoded["format"] == SPEC_FORMAT
    assert decoded["hidden"] == [64, 32]
    assert spec.spec_hash() == hashlib.sha256(raw).digest()


def test_equal_specs_hash_equal_and_any_field_change_changes_the_hash() -> None:
    base = mlp(30, 2, hidden=(64, 32), dropout=0.1)
    assert mlp(30, 2, hidden=(64, 32), dropout=0.1).spec_hash() == base.spec_hash()
    variants = [
        mlp(31, 2, hidden=(64, 32), dropout=0.1),
        mlp(30, 3, hidden=(64, 32), dropout=0.1),
        mlp(30, 2, hidden=(32, 64), dropout=0.1),
        mlp(30, 2, hidden=(64, 32), dropout=0.2),
        mlp(30, 2, hidden=(64, 32), dropout=0.1, batch_norm=True),
        logistic_regression(30, 2),
    ]
    assert len({v.spec_hash() for v in variants} | {base.spec_hash()}) == len(variants) + 1


@pytest.mark.parametrize(
    "spec",
    [logistic_regression(5), mlp(8, 3, hidden=(4,), dropout=0.25, batch_norm=True), small_cnn()],
)
def test_round_trip_through_canonical_bytes(spec: ModelSpec) -> None:
    assert ModelSpec.from_canonical_bytes(spec.canonical_bytes()) == spec


def test_decoder_refuses_non_canonical_unknown_and_missing_fields() -> None:
    spec = logistic_regression(5)
    as_dict = spec.to_json_dict()
    with pytest.raises(SpecError, match="canonical"):
        ModelSpec.from_canonical_bytes(json.dumps(as_dict, indent=1, sort_keys=True).encode())
    with pytest.raises(SpecError, match="keys"):
        ModelSpec.from_json_dict({**as_dict, "extra": 1})
    del as_dict["kind"]
    with pytest.raises(SpecError, match="keys"):
        ModelSpec.from_json_dict(as_dict)
    with pytest.raises(SpecError, match="format"):
        ModelSpec.from_json_dict({**spec.to_json_dict(), "format": "other/9"})
    with pytest.raises(SpecError, match="ASCII JSON"):
        ModelSpec.from_canonical_bytes(b"\xff{")


def test_invalid_specs_are_refused_with_a_reason() -> None:
    with pytest.raises(SpecError, match="kind"):
        ModelSpec(kind="rnn", n_features=3, n_classes=2)  # type: ignore[arg-type]
    with pytest.raises(SpecError, match="n_classes"):
        logistic_regression(3, 1)
    with pytest.raises(SpecError, match="dropout"):
        mlp(3, 2, dropout=1.0)
    with pytest.raises(SpecError, match="hidden"):
        ModelSpec(kind="mlp", n_features=3, n_classes=2)
    with pytest.raises(SpecError, match="multiply"):
        ModelSpec(kind="cnn", n_features=63, n_classes=10, image_shape=(1, 8, 8), conv_channels=(4,))
    with pytest.raises(SpecError, match="only for cnn"):
        ModelSpec(kind="mlp", n_features=64, n_classes=2, hidden=(3,), image_shape=(1, 8, 8))
    with pytest.raises(SpecError, match="n_features"):
        ModelSpec(kind="logreg", n_features=True, n_classes=2)


def test_package_exports_exactly_its_public_names() -> None:
    import models

    assert len(set(models.__all__)) == len(models.__all__)
    for name in models.__all__:
        assert getattr(models, name) is not None, name
    public = {n for n, v in vars(models).items() if not n.startswith("_") and not inspect.ismodule(v)}
    assert public == set(models.__all__)
