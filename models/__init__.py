"""Models, datasets, site splits, local training and merge weighting.

This package knows nothing about networking or crypto (README, Architecture: imports point down).
"""

from .data import SKLEARN_DATASETS as SKLEARN_DATASETS
from .data import Dataset as Dataset
from .data import DatasetError as DatasetError
from .data import MissingColumnError as MissingColumnError
from .data import MissingFileError as MissingFileError
from .data import MissingValueError as MissingValueError
from .data import NonNumericFeatureError as NonNumericFeatureError
from .data import PreprocessConfig as PreprocessConfig
from .data import Preprocessor as Preprocessor
from .data import UnknownDatasetError as UnknownDatasetError
from .data import agree_on_genes as agree_on_genes
from .data import highly_variable_genes as highly_variable_genes
from .data import load_csv as load_csv
from .data import load_dataset as load_dataset
from .data import load_h5ad as load_h5ad
from .data import load_npz as load_npz
from .data import load_sklearn as load_sklearn
from .flatten import FloatVector as FloatVector
from .flatten import LayoutMismatch as LayoutMismatch
from .flatten import ParameterLayout as ParameterLayout
from .flatten import flatten as flatten
from .flatten import layout_of as layout_of
from .flatten import spec_layout as spec_layout
from .flatten import unflatten as unflatten
from .merge import MERGE_METHODS as MERGE_METHODS
from .merge import MergeMethod as MergeMethod
from .merge import coordinate_median as coordinate_median
from .merge import merge as merge
from .merge import merge_weight as merge_weight
from .merge import trimmed_mean as trimmed_mean
from .merge import weighted_mean as weighted_mean
from .nets import SeededDropout as SeededDropout
from .nets import SpecNet as SpecNet
from .nets import bind_generator as bind_generator
from .nets import build_model as build_model
from .spec import ModelSpec as ModelSpec
from .spec import SpecError as SpecError
from .spec import logistic_regression as logistic_regression
from .spec import mlp as mlp
from .spec import small_cnn as small_cnn
from .splits import SCENARIO_KINDS as SCENARIO_KINDS
from .splits import Scenario as Scenario
from .splits import SiteSplit as SiteSplit
from .splits import preset_scenario as preset_scenario
from .splits import split_sites as split_sites
from .training import LocalTrainer as LocalTrainer
from .training import Metrics as Metrics
from .training import TrainConfig as TrainConfig
from .training import TrainResult as TrainResult
from .training import classification_metrics as classification_metrics
from .training import evaluate_model as evaluate_model
from .training import init_parameters as init_parameters

__all__ = [
    "MERGE_METHODS",
    "SCENARIO_KINDS",
    "SKLEARN_DATASETS",
    "Dataset",
    "DatasetError",
    "FloatVector",
    "LayoutMismatch",
    "LocalTrainer",
    "MergeMethod",
    "Metrics",
    "MissingColumnError",
    "MissingFileError",
    "MissingValueError",
    "ModelSpec",
    "NonNumericFeatureError",
    "ParameterLayout",
    "PreprocessConfig",
    "Preprocessor",
    "Scenario",
    "SeededDropout",
    "SiteSplit",
    "SpecError",
    "SpecNet",
    "TrainConfig",
    "TrainResult",
    "UnknownDatasetError",
    "agree_on_genes",
    "bind_generator",
    "build_model",
    "classification_metrics",
    "coordinate_median",
    "evaluate_model",
    "flatten",
    "highly_variable_genes",
    "init_parameters",
    "layout_of",
    "load_csv",
    "load_dataset",
    "load_h5ad",
    "load_npz",
    "load_sklearn",
    "logistic_regression",
    "merge",
    "merge_weight",
    "mlp",
    "preset_scenario",
    "small_cnn",
    "spec_layout",
    "split_sites",
    "trimmed_mean",
    "unflatten",
    "weighted_mean",
]
