"""The model afterwards: `swarmnode export` writes a site's final model with everything
needed to use it, `swarmnode predict` applies it to a data file.

An export directory holds::

    model.pt | model.torchscript.pt | model.safetensors | model.onnx   the network
    model.json       the `models.spec.ModelSpec` the swarm trained and its structure (every
                     state-dict entry's name, shape and dtype, `models.structure`)
    preprocess.json  what to do to a data file first: the selected features (genes),
                     log1p, the standardisation's mean and scale (the swarm's pooled
                     ones with standardize = "swarm", whose means also fill missing values
                     under impute = "mean"), feature and class names, the genesis's
                     categories of each categorical column (one-hot order), and how the
                     labels were read (label column, positive class)
    card.json + MODEL_CARD.md   chain id, final model hash, the merged rounds with their
                     contributors and weights (this site's own ledger), metrics

The final model is the ledger stop record's: under genesis ``stopping.select = "best"``
the merged model with the best pooled validation metric (`consensus.selection`; the card
names its round, ``selected_round``, and its validation metrics are that round's), else
the last merged one.

`export_site` rebuilds all of it from one site's files as `swarmnode run` left them: the
final model by its ledger hash from ``<storage_dir>/models``, the preprocessing by
loading the site's data as training did and, for swarm standardisation, replaying the
statistics rounds' merged vectors (their hashes are the first merged rounds on the
ledger) through `models.preprocess.PooledMoments`. `predict_file` loads a directory,
reads a file with the training loaders (`models.data.load_dataset`; an image model reads
a folder of class folders, or of unlabelled images, `models.images`), applies the saved
preprocessing and writes class probabilities and the predicted class; with labels it also
computes the metrics exactly as the trainer computed its test metrics.
"""

from __future__ import annotations

import csv
import hashlib
import importlib
import importlib.util
import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, cast, final

import numpy as np
import torch
from torch import nn

from models.data import Dataset, DatasetError, MissingPolicy, load_dataset, load_unlabelled_csv
from models.flatten import FloatVector, unflatten
from models.images import read_images_for_prediction
from models.nets import build_network
from models.preprocess import PreprocessConfig, Preprocessor
from models.schema import CategoricalColumn
from models.spec import ModelSpec, SpecError
from models.structure import ModelTensor, spec_structure
from models.training import Metrics, class_probabilities, evaluate_model

from .onnx_export import OnnxExportError, OnnxModule, onnx_parameters, write_onnx
from .results import params_hash

if TYPE_CHECKING:
    from .config import NodeConfig
    from .ledgerview import LedgerRecord
    from .trainer import TrainingSummary

__all__ = [
    "EXPORT_FORMATS",
    "ExportError",
    "ExportedModel",
    "FinalModel",
    "export_site",
    "load_export",
    "predict_file",
    "write_export",
]

EXPORT_FORMATS: Final = ("torch", "torchscript", "safetensors", "onnx")
MODEL_FILES: Final = {
    "torch": "model.pt",
    "torchscript": "model.torchscript.pt",
    "safetensors": "model.safetensors",
    "onnx": "model.onnx",
}
# The package each format needs beyond torch: the optional extra `swarmnode[export]`.
_FORMAT_PACKAGES: Final = {"safetensors": "safetensors", "onnx": "onnx"}
EXPORT_FORMAT_VERSION: Final = 1


class ExportError(Exception):
    """An export or a prediction cannot be made; the message names the file or setting."""


@final
@dataclass(frozen=True, eq=False, kw_only=True)
class FinalModel:
    """A trained model and what its inputs need: the spec, the flat parameters (the ledger's
    vector), the preprocessing, the class names and the categorical columns' agreed
    categories (genesis ``data.categorical``); how labels are read, for `predict_file`."""

    spec: ModelSpec
    parameters: FloatVector
    preprocessor: Preprocessor
    class_names: tuple[str, ...]
    label_column: str | None = None
    positive_class: str | None = None
    categorical: tuple[CategoricalColumn, ...] = ()

    @classmethod
    def from_summary(
        cls,
        summary: TrainingSummary,
        spec: ModelSpec,
        class_names: Sequence[str],
        *,
        label_column: str | None = None,
        positive_class: str | None = None,
        categorical: Sequence[CategoricalColumn] = (),
    ) -> FinalModel:
        """The embedding API's route: a `models.LocalTrainer`'s `TrainingSummary` (its
        parameters and preprocessing), the spec it trained and its class names (and the
        genesis's ``data.categorical`` if its table has categorical columns)."""
        if summary.preprocessor is None:
            raise ExportError(
                "this training summary has no preprocessing (a from_torch model): export it with torch"
            )
        return cls(
            spec=spec,
            parameters=summary.parameters,
            preprocessor=summary.preprocessor,
            class_names=tuple(class_names),
            label_column=label_column,
            positive_class=positive_class,
            categorical=tuple(categorical),
        )

    def module(self) -> nn.Module:
        """The network in eval mode, holding `parameters`."""
        model = build_network(self.spec, torch.Generator().manual_seed(0))
        unflatten(model, self.parameters, self.spec)
        return model.eval()

    def structure(self) -> tuple[ModelTensor, ...]:
        """The network's state-dict entries (name, shape, dtype): model.json records them."""
        return spec_structure(self.spec)

    def preprocess_json(self) -> dict[str, Any]:
        config = self.preprocessor.config
        return {
            "format": EXPORT_FORMAT_VERSION,
            "genes": None if config.genes is None else list(config.genes),
            "log1p": config.log1p,
            "standardize": config.mode,
            "impute": config.impute,
            "feature_names": list(self.preprocessor.feature_names),
            # float32 values written as exact doubles: reading them back is bit-identical
            "mean": [float(v) for v in self.preprocessor.mean.reshape(-1)],
            "scale": [float(v) for v in self.preprocessor.scale.reshape(-1)],
            "class_names": list(self.class_names),
            "label_column": self.label_column,
            "positive_class": self.positive_class,
            "categorical": [{"name": c.name, "categories": list(c.categories)} for c in self.categorical],
        }


@final
@dataclass(frozen=True, eq=False, kw_only=True)
class ExportedModel:
    """An export directory loaded back (`load_export`)."""

    module: nn.Module
    spec: ModelSpec
    preprocessor: Preprocessor
    class_names: tuple[str, ...]
    label_column: str | None
    positive_class: str | None
    categories: Mapping[str, tuple[str, ...]]  # categorical column -> its categories, one-hot order


def _require_package(fmt: str) -> None:
    if fmt not in EXPORT_FORMATS:
        raise ExportError(f"format must be one of {', '.join(EXPORT_FORMATS)}, got {fmt!r}")
    package = _FORMAT_PACKAGES.get(fmt)
    if package is not None and importlib.util.find_spec(package) is None:
        raise ExportError(
            f"format {fmt!r} needs the Python package {package!r}, which is not installed "
            "(the export extra: pip install -c constraints.txt -e '.[export]'); formats available "
            "without it: torch, torchscript"
        )


def _write_network(model: FinalModel, fmt: str, path: Path) -> None:
    module = model.module()
    example = torch.zeros(1, model.spec.n_features)
    if fmt == "torch":
        torch.save(module.state_dict(), path)
    elif fmt == "torchscript":
        with warnings.catch_warnings():  # torch >= 2.9 deprecates TorchScript; its loaders still read it
            warnings.simplefilter("ignore", DeprecationWarning)
            traced = torch.jit.trace(module, example)  # type: ignore[no-untyped-call]
        traced.save(str(path))
    elif fmt == "safetensors":
        # safetensors is optional (`_require_package`): imported by name, untyped
        importlib.import_module("safetensors.torch").save_file(
            {k: v.contiguous() for k, v in module.state_dict().items()}, str(path)
        )
    else:
        try:
            write_onnx(module, model.spec.n_features, path)
        except OnnxExportError as exc:
            raise ExportError(str(exc)) from None


def write_export(
    out: Path, model: FinalModel, fmt: str = "torch", card: Mapping[str, Any] | None = None
) -> list[Path]:
    """Write `model` in format `fmt` to directory `out` (created), with model.json,
    preprocess.json and, given a `card` (`site_card`), card.json and MODEL_CARD.md."""
    _require_package(fmt)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / MODEL_FILES[fmt], out / "model.json", out / "preprocess.json"]
    _write_network(model, fmt, written[0])
    structure = [{"name": t.name, "shape": list(t.shape), "dtype": t.dtype} for t in model.structure()]
    spec_json = {
        **model.spec.to_json_dict(),
        "file": MODEL_FILES[fmt],
        "export_format": fmt,
        "structure": structure,
    }
    written[1].write_text(json.dumps(spec_json, indent=2) + "\n", encoding="utf-8")
    written[2].write_text(json.dumps(model.preprocess_json(), indent=2) + "\n", encoding="utf-8")
    if card is not None:
        (out / "card.json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
        (out / "MODEL_CARD.md").write_text(card_markdown(card), encoding="utf-8")
        written += [out / "card.json", out / "MODEL_CARD.md"]
    return written


# -- one site's final model, rebuilt from its files ------------------------------------------


def _stored_merged_model(config: NodeConfig, digest: bytes, n_params: int) -> FloatVector:
    path = config.node.storage_dir / "models" / f"{digest.hex()}.f32"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ExportError(
            f"{path}: the merged model {digest.hex()[:16]} is not in this site's storage"
        ) from None
    if hashlib.sha256(data).digest() != digest or len(data) != 4 * n_params:
        raise ExportError(f"{path}: contents do not match the ledger's hash {digest.hex()[:16]}")
    return np.frombuffer(data, dtype="<f4").astype(np.float32)


def site_final_model(config: NodeConfig, record: LedgerRecord) -> FinalModel:
    """The swarm's final model as this site holds it, with this site's preprocessing as it
    was at the end of training (see the module docstring)."""
    from models.preprocess import PooledMoments

    from .scaffold import load_genesis
    from .trainer import build_local_trainer

    if record.stopped is None or record.stopped.final_model_hash is None:
        raise ExportError(
            f"{config.source or 'site'}: swarm {record.swarm!r} has not stopped with a final model yet "
            "(the ledger has no final model hash): run the site until training stops"
        )
    genesis = load_genesis(config.ledger.genesis)
    trainer, _ = build_local_trainer(config, genesis)
    n_params = int(trainer.parameters().size)
    if trainer.preprocessor.config.mode == "swarm":
        counts = trainer.class_counts() if genesis.training.class_weights == "balanced" else None
        agreement = PooledMoments(
            trainer.feature_moments(), n_params, source=str(config.source), class_counts=counts
        )
        merged = [r.merged_hash for r in record.rounds if r.merged_hash is not None]
        for digest in merged[: agreement.rounds]:
            agreement.merged(_stored_merged_model(config, digest, n_params))
        trainer.standardize_with(agreement.result())
    return FinalModel(
        spec=config.model,
        parameters=_stored_merged_model(config, record.stopped.final_model_hash, n_params),
        preprocessor=trainer.preprocessor,
        class_names=trainer.class_names,
        label_column=config.data.label_column,
        positive_class=config.data.positive_class,
        categorical=() if genesis.data is None else genesis.data.categorical,
    )


def site_card(config: NodeConfig, record: LedgerRecord, statistics_rounds: int) -> dict[str, Any]:
    """The model card: the ledger's record of how the final model came about, and this
    site's metrics (metrics.json)."""
    from .metricsfile import METRICS_FILE, load_metrics

    names = {m.node_id: m.name for m in record.members}
    merged = [r for r in record.rounds if r.outcome == "merged"]
    rounds = []
    for index, r in enumerate(merged):
        rounds.append(
            {
                "round": r.number,
                "kind": "statistics" if index < statistics_rounds else "training",
                "merged_hash": None if r.merged_hash is None else r.merged_hash.hex(),
                "median_metric": r.median_metric,
                "contributors": [
                    {
                        "name": names.get(c.node_id, c.node_id.short),
                        "peer_id": c.node_id.peer_id,
                        "weight": c.weight,
                    }
                    for c in r.contributors
                ],
            }
        )
    try:
        metrics = load_metrics(config.node.storage_dir / METRICS_FILE) or {}
    except ValueError as exc:
        raise ExportError(str(exc)) from None
    if metrics.get("chain_id") not in (None, record.chain_id.hex()):
        raise ExportError(
            f"{config.node.storage_dir / METRICS_FILE}: metrics of chain {str(metrics['chain_id'])[:16]}, "
            f"not of this site's chain {record.chain_id.hex()[:16]}"
        )
    assert record.stopped is not None
    final = record.stopped.final_model_hash
    selected = next((r.number for r in merged if final is not None and r.merged_hash == final), None)
    last = next(
        (
            m
            for m in reversed(metrics.get("rounds", []))
            if m.get("kind") == "training" and selected in (None, m.get("round"))
        ),
        None,
    )
    return {
        "swarm": record.swarm,
        "chain_id": record.chain_id.hex(),
        "site": config.node.name,
        "model": config.model.to_json_dict(),
        "final_model_hash": None
        if record.stopped.final_model_hash is None
        else record.stopped.final_model_hash.hex(),
        "stop_reason": record.stopped.reason,
        "merged_rounds": record.stopped.merged_rounds,
        "selected_round": selected,
        "statistics_rounds": statistics_rounds,
        "rounds": rounds,
        "metrics": {
            "metric": metrics.get("metric"),
            "test": metrics.get("test"),
            "validation": None if last is None else last.get("merged"),
        },
    }


def card_markdown(card: Mapping[str, Any]) -> str:
    """MODEL_CARD.md from card.json's content."""
    lines = [
        f"# Model card: swarm {card['swarm']!r}",
        "",
        f"- chain id: `{card['chain_id']}`",
        f"- final model hash (SHA-256 of the float32 parameters): `{card['final_model_hash']}`",
        f"- exported by site: {card['site']}",
        f"- model: {card['model']['kind']}, {card['model']['n_features']} features, "
        f"{card['model']['n_classes']} classes",
        f"- stopped: {card['stop_reason']} after {card['merged_rounds']} merged rounds "
        f"({card['statistics_rounds']} of them swarm statistics); the final model is round "
        f"{card.get('selected_round')}'s merge",
        "",
        "## Metrics (this site's data)",
        "",
    ]
    metrics = card["metrics"]
    for split in ("validation", "test"):
        values = metrics.get(split)
        shown = "-" if not values else ", ".join(f"{k} {v}" for k, v in values.items())
        lines.append(f"- {split}: {shown}")
    lines += [
        "",
        "## Merged rounds (from this site's ledger)",
        "",
        "| round | kind | contributors (weight) | merged |",
    ]
    lines.append("|---|---|---|---|")
    for r in card["rounds"]:
        who = ", ".join(f"{c['name']} ({c['weight']})" for c in r["contributors"])
        lines.append(f"| {r['round']} | {r['kind']} | {who} | `{(r['merged_hash'] or '-')[:16]}` |")
    return "\n".join(lines) + "\n"


def export_site(config_path: Path, fmt: str, out: Path) -> list[Path]:
    """`swarmnode export`: the site's final model, preprocessing and card into `out`."""
    from .config import NodeConfig
    from .ledgerview import read_ledger
    from .scaffold import load_genesis

    _require_package(fmt)
    config = NodeConfig.load(config_path)
    record = read_ledger(config, read_only=True)
    model = site_final_model(config, record)
    k = load_genesis(config.ledger.genesis).training.stopping.statistics_rounds
    return write_export(out, model, fmt, site_card(config, record, k))


# -- using an export ---------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ExportError(f"{path}: not found (is {path.parent} a `swarmnode export` directory?)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExportError(f"{path}: unreadable ({exc})") from None
    if not isinstance(data, dict):
        raise ExportError(f"{path}: expected a JSON object")
    return data


def _preprocessor(data: Mapping[str, Any], path: Path) -> Preprocessor:
    try:
        genes = data["genes"]
        config = PreprocessConfig(
            genes=None if genes is None else tuple(genes),
            log1p=bool(data["log1p"]),
            standardize=data["standardize"],
            impute=data.get("impute", "none"),  # exports before missing-value imputation had none
        )
        return Preprocessor(
            config=config,
            feature_names=tuple(data["feature_names"]),
            mean=np.asarray(data["mean"], dtype=np.float32)[None, :],
            scale=np.asarray(data["scale"], dtype=np.float32)[None, :],
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ExportError(f"{path}: malformed preprocessing ({exc!r})") from None


def _load_network(spec: ModelSpec, fmt: str, file: Path) -> tuple[nn.Module, Mapping[str, torch.Tensor]]:
    """(the network to run, its tensors by state-dict name). TorchScript and ONNX files carry
    their network; torch and safetensors files are loaded into the spec's network (for a
    factory model, its function must import here)."""
    if fmt == "torchscript":
        module = cast(nn.Module, torch.jit.load(str(file))).eval()  # type: ignore[no-untyped-call]
        return module, module.state_dict()
    _require_package(fmt)
    if fmt == "onnx":
        try:
            return OnnxModule(file), onnx_parameters(file)
        except OnnxExportError as exc:
            raise ExportError(str(exc)) from None
    if fmt == "safetensors":
        state = importlib.import_module("safetensors.torch").load_file(str(file))
    else:
        state = torch.load(file, weights_only=True)
    try:
        model = build_network(spec, torch.Generator().manual_seed(0))
    except SpecError as exc:
        raise ExportError(
            f"{file}: {exc}; a {fmt} export rebuilds the network by its factory (torchscript and onnx "
            "exports carry it)"
        ) from None
    model.load_state_dict(state)
    return model.eval(), state


def _check_final_hash(
    directory: Path, state: Mapping[str, torch.Tensor], structure: Sequence[ModelTensor]
) -> None:
    """With a card, the network's parameters must be the final model the ledger names: a
    model file replaced or edited after the export is refused, not used. The flat vector is
    built from the file's tensors in the order of model.json's structure, as
    `models.flatten.flatten` builds it from a module."""
    if not (directory / "card.json").exists():
        return
    expected = _read_json(directory / "card.json").get("final_model_hash")
    floating = [t for t in structure if t.floating]
    wrong = [t.name for t in floating if t.name not in state or tuple(state[t.name].shape) != t.shape]
    if wrong:
        raise ExportError(
            f"{directory}: the model file does not have the structure of model.json "
            f"(tensors {', '.join(wrong[:5])} missing or of another shape)"
        )
    with torch.no_grad():
        parts = [state[t.name].detach().reshape(-1).cpu().to(torch.float32) for t in floating]
    actual = params_hash(torch.cat(parts).numpy() if parts else np.zeros(0, np.float32)).hex()
    if actual != expected:
        raise ExportError(
            f"{directory}: the model file's parameters hash to {actual[:16]}, but card.json names the "
            f"swarm's final model {str(expected)[:16]}: the model file was changed after the export"
        )


def _structure(recorded: Sequence[Mapping[str, Any]]) -> tuple[ModelTensor, ...]:
    return tuple(ModelTensor(name=t["name"], shape=tuple(t["shape"]), dtype=t["dtype"]) for t in recorded)


def load_export(directory: Path) -> ExportedModel:
    """An export directory (`write_export`) loaded back: the network in eval mode and its
    preprocessing; with a card.json, only if the network is the card's final model."""
    model_json = _read_json(directory / "model.json")
    fmt, name = model_json.pop("export_format", None), model_json.pop("file", None)
    if fmt not in EXPORT_FORMATS or not isinstance(name, str):
        raise ExportError(f"{directory / 'model.json'}: no export_format / file entry")
    recorded = model_json.pop("structure", None)
    try:
        spec = ModelSpec.from_json_dict(model_json)
        structure = spec_structure(spec) if recorded is None else _structure(recorded)
    except (ValueError, KeyError, TypeError) as exc:
        raise ExportError(f"{directory / 'model.json'}: {exc}") from None
    pre = _read_json(directory / "preprocess.json")
    module, state = _load_network(spec, fmt, directory / name)
    _check_final_hash(directory, state, structure)
    return ExportedModel(
        module=module,
        spec=spec,
        preprocessor=_preprocessor(pre, directory / "preprocess.json"),
        class_names=tuple(pre["class_names"]),
        label_column=pre.get("label_column"),
        positive_class=pre.get("positive_class"),
        categories=_categories(pre.get("categorical", []), directory / "preprocess.json"),
    )


def _categories(recorded: Sequence[Mapping[str, Any]], path: Path) -> dict[str, tuple[str, ...]]:
    """preprocess.json's ``categorical`` (exports before categorical columns had none)."""
    try:
        columns = [CategoricalColumn(name=c["name"], categories=tuple(c["categories"])) for c in recorded]
    except (KeyError, TypeError, ValueError) as exc:
        raise ExportError(f"{path}: malformed categorical columns ({exc!r})") from None
    return {c.name: c.categories for c in columns}


def _labels_as_trained(data: Dataset, class_names: Sequence[str]) -> Dataset:
    """`data` with its labels renumbered to the model's classes (a file holding only some of
    the classes numbers them from 0 by itself)."""
    if data.class_names == tuple(class_names):
        return data
    unknown = [c for c in data.class_names if c not in class_names]
    if unknown:
        raise DatasetError(f"{data.source}: classes {unknown} are not the model's ({', '.join(class_names)})")
    mapping = np.asarray([class_names.index(c) for c in data.class_names], dtype=np.int64)
    return Dataset(
        features=data.features,
        labels=mapping[data.labels],
        feature_names=data.feature_names,
        class_names=tuple(class_names),
        source=data.source,
    )


def _read_for_prediction(source: str, exported: ExportedModel) -> tuple[Dataset, bool]:
    """(data, labelled): the file as training read it (categorical columns one-hot encoded
    with the swarm's categories, missing values kept where training imputed them), or a CSV
    without the label column read the same way."""
    label_column = exported.label_column
    path = Path(source)
    if path.is_dir() and exported.spec.image_shape is not None:
        return read_images_for_prediction(path, exported.spec.image_shape, exported.class_names)
    missing: MissingPolicy = "keep" if exported.preprocessor.config.impute == "mean" else "refuse"
    categories = dict(exported.categories) or None
    if path.suffix.lower() == ".csv" and path.is_file():
        with path.open(newline="", encoding="utf-8") as handle:
            header = [h.strip() for h in next(csv.reader(handle), [])]
        if label_column is None or label_column not in header:
            unlabelled = load_unlabelled_csv(
                path, exported.class_names, categories=categories, missing=missing
            )
            return unlabelled, False
    data = load_dataset(
        source,
        label_column=label_column,
        positive_class=exported.positive_class,
        missing=missing,
        categories=categories,
        class_names=None if exported.positive_class is not None else exported.class_names,
    )
    return _labels_as_trained(data, exported.class_names), True


def _aligned_features(data: Dataset, preprocessor: Preprocessor) -> Dataset:
    """The file's feature columns put in the model's order by name; missing (and, without a
    gene list, unexpected) columns are refused, listed."""
    expected = preprocessor.config.genes or preprocessor.feature_names
    missing = [f for f in expected if f not in data.feature_names]
    extra = (
        [] if preprocessor.config.genes is not None else [f for f in data.feature_names if f not in expected]
    )
    if missing or extra:
        raise DatasetError(
            f"{data.source}: feature columns differ from the model's ({len(expected)} in preprocess.json): "
            f"missing {_listed(missing)}, unexpected {_listed(extra)}"
        )
    return data.select_features(expected)


def _listed(names: Sequence[str]) -> str:
    return (
        "none" if not names else ", ".join(repr(n) for n in names[:10]) + (" ..." if len(names) > 10 else "")
    )


def predict_file(directory: Path, source: str, out: Path) -> tuple[int, Metrics | None]:
    """Predict every row of `source` with the export in `directory`; write `out` (CSV: row,
    one probability column per class, predicted class and, for labelled data, the true
    class). `source` is read as training read its data, or is a CSV without the label
    column. Returns the row count and the metrics on the file's labels (None without)."""
    exported = load_export(directory)
    data, labelled = _read_for_prediction(source, exported)
    processed = exported.preprocessor.transform(_aligned_features(data, exported.preprocessor))
    x = torch.from_numpy(processed.features.copy())
    y = torch.from_numpy(processed.labels.copy())
    names = exported.class_names
    metrics = evaluate_model(exported.module, x, y, len(names)) if labelled else None
    with torch.no_grad():
        probabilities = class_probabilities(exported.module(x), len(names)).numpy()
    with out.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["row", *(f"p_{c}" for c in names), "predicted", *(["true"] if labelled else [])])
        for i, row in enumerate(probabilities):
            truth = [names[int(y[i])]] if labelled else []
            writer.writerow([i, *(repr(float(p)) for p in row), names[int(row.argmax())], *truth])
    return int(x.shape[0]), metrics
