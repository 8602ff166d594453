"""Models, datasets, site splits, local training and merge rules.

This package knows nothing about networking or crypto. The names below are imported on
first use (PEP 562), as in `swarmnode`: the genesis reads the merge-rule registry
(`models.rules`) without paying for torch. Type checkers read the imports below.
`models.flatten` and `models.merge` are the submodules (a lazily filled package attribute
cannot be both a submodule and a function): import `flatten` and `merge` from them.
"""

import importlib
import typing  # only modules and the public names below: `__all__` is what vars() shows

if typing.TYPE_CHECKING:
    from .data import SKLEARN_DATASETS as SKLEARN_DATASETS
    from .data import Dataset as Dataset
    from .data import DatasetError as DatasetError
    from .data import MissingColumnError as MissingColumnError
    from .data import MissingFileError as MissingFileError
    from .data import MissingValueError as MissingValueError
    from .data import NonNumericFeatureError as NonNumericFeatureError
    from .data import UnknownDatasetError as UnknownDatasetError
    from .data import load_csv as load_csv
    from .data import load_dataset as load_dataset
    from .data import load_h5ad as load_h5ad
    from .data import load_npz as load_npz
    from .data import load_sklearn as load_sklearn
    from .flatten import FloatVector as FloatVector
    from .flatten import LayoutMismatch as LayoutMismatch
    from .flatten import ParameterLayout as ParameterLayout
    from .flatten import layout_of as layout_of
    from .flatten import spec_layout as spec_layout
    from .flatten import unflatten as unflatten
    from .images import ImageAugmenter as ImageAugmenter
    from .images import load_image_folder as load_image_folder
    from .merge import coordinate_median as coordinate_median
    from .merge import merge_weight as merge_weight
    from .merge import trimmed_mean as trimmed_mean
    from .merge import weighted_mean as weighted_mean
    from .nets import SeededDropout as SeededDropout
    from .nets import SpecNet as SpecNet
    from .nets import bind_generator as bind_generator
    from .nets import build_model as build_model
    from .nets import build_network as build_network
    from .preprocess import PreprocessConfig as PreprocessConfig
    from .preprocess import Preprocessor as Preprocessor
    from .preprocess import agree_on_genes as agree_on_genes
    from .preprocess import highly_variable_genes as highly_variable_genes
    from .rules import RULES as RULES
    from .rules import MergeRule as MergeRule
    from .rules import RuleMath as RuleMath
    from .rules import RuleParam as RuleParam
    from .rules import rule_named as rule_named
    from .spec import ModelSpec as ModelSpec
    from .spec import SpecError as SpecError
    from .spec import factory_model as factory_model
    from .spec import logistic_regression as logistic_regression
    from .spec import mlp as mlp
    from .spec import monai_image_net as monai_image_net
    from .spec import small_cnn as small_cnn
    from .splits import SCENARIO_KINDS as SCENARIO_KINDS
    from .splits import Scenario as Scenario
    from .splits import SiteSplit as SiteSplit
    from .splits import preset_scenario as preset_scenario
    from .splits import split_sites as split_sites
    from .structure import ModelTensor as ModelTensor
    from .structure import StructureMismatch as StructureMismatch
    from .structure import structure_of as structure_of
    from .training import LocalTrainer as LocalTrainer
    from .training import Metrics as Metrics
    from .training import TrainConfig as TrainConfig
    from .training import TrainResult as TrainResult
    from .training import classification_metrics as classification_metrics
    from .training import evaluate_model as evaluate_model
    from .training import init_parameters as init_parameters

# public name -> the submodule defining it
_EXPORTS: typing.Final[dict[str, str]] = {
    "Dataset": "data",
    "DatasetError": "data",
    "MissingColumnError": "data",
    "MissingFileError": "data",
    "MissingValueError": "data",
    "NonNumericFeatureError": "data",
    "SKLEARN_DATASETS": "data",
    "UnknownDatasetError": "data",
    "load_csv": "data",
    "load_dataset": "data",
    "load_h5ad": "data",
    "load_npz": "data",
    "load_sklearn": "data",
    "FloatVector": "flatten",
    "ImageAugmenter": "images",
    "load_image_folder": "images",
    "LayoutMismatch": "flatten",
    "ParameterLayout": "flatten",
    "layout_of": "flatten",
    "spec_layout": "flatten",
    "unflatten": "flatten",
    "coordinate_median": "merge",
    "merge_weight": "merge",
    "trimmed_mean": "merge",
    "weighted_mean": "merge",
    "SeededDropout": "nets",
    "SpecNet": "nets",
    "bind_generator": "nets",
    "build_model": "nets",
    "build_network": "nets",
    "PreprocessConfig": "preprocess",
    "Preprocessor": "preprocess",
    "agree_on_genes": "preprocess",
    "highly_variable_genes": "preprocess",
    "MergeRule": "rules",
    "RULES": "rules",
    "RuleMath": "rules",
    "RuleParam": "rules",
    "rule_named": "rules",
    "ModelSpec": "spec",
    "SpecError": "spec",
    "factory_model": "spec",
    "logistic_regression": "spec",
    "ModelTensor": "structure",
    "StructureMismatch": "structure",
    "structure_of": "structure",
    "mlp": "spec",
    "monai_image_net": "spec",
    "small_cnn": "spec",
    "SCENARIO_KINDS": "splits",
    "Scenario": "splits",
    "SiteSplit": "splits",
    "preset_scenario": "splits",
    "split_sites": "splits",
    "LocalTrainer": "training",
    "Metrics": "training",
    "TrainConfig": "training",
    "TrainResult": "training",
    "classification_metrics": "training",
    "evaluate_model": "training",
    "init_parameters": "training",
}

__all__ = [
    "RULES",
    "SCENARIO_KINDS",
    "SKLEARN_DATASETS",
    "Dataset",
    "DatasetError",
    "FloatVector",
    "ImageAugmenter",
    "LayoutMismatch",
    "LocalTrainer",
    "MergeRule",
    "Metrics",
    "MissingColumnError",
    "MissingFileError",
    "MissingValueError",
    "ModelSpec",
    "ModelTensor",
    "NonNumericFeatureError",
    "ParameterLayout",
    "PreprocessConfig",
    "Preprocessor",
    "RuleMath",
    "RuleParam",
    "Scenario",
    "SeededDropout",
    "SiteSplit",
    "SpecError",
    "SpecNet",
    "StructureMismatch",
    "TrainConfig",
    "TrainResult",
    "UnknownDatasetError",
    "agree_on_genes",
    "bind_generator",
    "build_model",
    "build_network",
    "classification_metrics",
    "coordinate_median",
    "evaluate_model",
    "factory_model",
    "highly_variable_genes",
    "init_parameters",
    "layout_of",
    "load_csv",
    "load_dataset",
    "load_h5ad",
    "load_image_folder",
    "load_npz",
    "load_sklearn",
    "logistic_regression",
    "merge_weight",
    "mlp",
    "monai_image_net",
    "preset_scenario",
    "rule_named",
    "small_cnn",
    "spec_layout",
    "split_sites",
    "structure_of",
    "trimmed_mean",
    "unflatten",
    "weighted_mean",
]


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'models' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
