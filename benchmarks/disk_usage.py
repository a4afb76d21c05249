"""Disk usage of a tree whose states share a large dataset and each hold a distinct model.

    python benchmarks/disk_usage.py [--dataset-mb 200] [--model-mb 20] [--states 6] [--dir PATH]

The root holds the dataset and a model; every other state is a child of the
root that replaces the model with a new one (and leaves the dataset as it
is). Unique bytes are ``dataset + states x model``; a store that pickled
every state whole would need ``states x (dataset + model)``. Prints one JSON
line with the bytes on disk (allocated blocks, as ``du`` counts them, and
apparent sizes) and their ratio to the unique bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile

import numpy as np

import dagger as dg


class Study(dg.ExperimentState):
    PROPERTIES = ["dataset_mb", "model_mb"]
    NONHASHED_ATTRIBUTES = ["dataset", "model"]

    def initialize_state(self, **kwargs):
        rng = np.random.default_rng(0)
        self.dataset = rng.random(int(self.dataset_mb * 1e6) // 8)
        self.model = rng.random(int(self.model_mb * 1e6) // 8)


class Retrain(dg.Recipe):
    """A new model from the same data: the dataset stays untouched."""

    PROPERTIES = ["seed"]

    def run(self, state):
        state.model = np.random.default_rng(self.seed).random(state.model.shape[0])
        return state


def usage(directory: str) -> tuple[int, int, int]:
    """(allocated bytes, apparent bytes, files) under ``directory``."""
    allocated = apparent = files = 0
    for dirpath, _, names in os.walk(directory):
        for name in names:
            st = os.stat(os.path.join(dirpath, name))
            allocated += st.st_blocks * 512
            apparent += st.st_size
            files += 1
    return allocated, apparent, files


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset-mb", type=float, default=200)
    parser.add_argument("--model-mb", type=float, default=20)
    parser.add_argument("--states", type=int, default=6)
    parser.add_argument("--dir", default=None, help="where to write (default: a temporary folder)")
    args = parser.parse_args(argv)

    base = tempfile.mkdtemp(prefix="dagger-disk-", dir=args.dir)
    try:
        directory = os.path.join(base, "exp")
        exp = dg.Experiment(directory, state_class=Study)
        root = exp.spawn_new_tree(dataset_mb=args.dataset_mb, model_mb=args.model_mb)
        for seed in range(1, args.states):
            Retrain(seed=seed)(root)
        report = exp.run(progress=False)
        assert len(report.computed) == args.states
        allocated, apparent, files = usage(directory)
        blobs_alloc, blobs_apparent, nblobs = usage(os.path.join(directory, "blobs"))
        dataset = (int(args.dataset_mb * 1e6) // 8) * 8
        model = (int(args.model_mb * 1e6) // 8) * 8
        unique = dataset + args.states * model
        result = {
            "benchmark": "disk_usage",
            "states": args.states,
            "dataset_bytes": dataset,
            "model_bytes": model,
            "unique_bytes": unique,
            "disk_bytes": allocated,
            "apparent_bytes": apparent,
            "blob_bytes": blobs_apparent,
            "blobs": nblobs,
            "files": files,
            "ratio": round(allocated / unique, 4),
            "apparent_ratio": round(apparent / unique, 4),
            "whole_pickle_bytes": args.states * (dataset + model),
            "saving_vs_whole_pickles": round(args.states * (dataset + model) / allocated, 2),
            "verify_ok": exp.verify().ok,
        }
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
