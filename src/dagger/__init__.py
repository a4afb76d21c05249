"""dagger: reproducible machine-learning experiment trees.

Define states and recipes, grow a tree lazily, run it on Dask, and later
find, compare and reload any state with its full provenance.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

# Errors
from dagger.errors import (
    CodeNotFoundError,
    CorruptRecordError,
    DaggerError,
    DaggerWarning,
    DefinitionError,
    DeflatedStateError,
    FormatVersionError,
    InvalidHashError,
    MissingPropertyError,
    NotAnExperimentError,
    RecipeChangedError,
    RecipeReturnError,
    RunFailedError,
    StateClassMismatchError,
    StateNotFoundError,
    StoreError,
    UnhashableError,
    UnknownPropertyError,
    UntrustedPickleError,
)

# The experiment tree
from dagger.experiment import Experiment

# Analysis
from dagger.graph import NodeSet, StaticExperimentTree

# Identity
from dagger.hashing import register_encoder
from dagger.promise import ExperimentStatePromise
from dagger.recipe import Function, FunctionCall, Recipe
from dagger.report import RunReport, StateRun
from dagger.state import ExperimentState

try:
    __version__ = version("dagger-experiments")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

__all__ = [
    # the experiment tree
    "Experiment",
    "ExperimentState",
    "ExperimentStatePromise",
    "Recipe",
    "Function",
    "FunctionCall",
    # analysis
    "StaticExperimentTree",
    "NodeSet",
    "RunReport",
    "StateRun",
    # identity
    "register_encoder",
    # errors
    "DaggerError",
    "DaggerWarning",
    "DefinitionError",
    "MissingPropertyError",
    "UnknownPropertyError",
    "RecipeReturnError",
    "UnhashableError",
    "NotAnExperimentError",
    "StateClassMismatchError",
    "UntrustedPickleError",
    "CorruptRecordError",
    "FormatVersionError",
    "StateNotFoundError",
    "InvalidHashError",
    "DeflatedStateError",
    "StoreError",
    "CodeNotFoundError",
    "RecipeChangedError",
    "RunFailedError",
    "__version__",
]
