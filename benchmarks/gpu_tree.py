"""A GPU model tree: an MLP through root, train, prune and train in two branches, against a hand-written loop.

    python benchmarks/gpu_tree.py [--device cuda] [--params 1e8] [--repeat 3] [--dir PATH]

On a machine without CUDA it prints ``{"skipped": "no CUDA", ...}`` and exits 0.
``--device cpu --params 1e6`` runs the very same code on the CPU (to check the
script itself; its figures are not the GPU targets).

The tree (6 states): ``root`` (the model built on the device) -> ``Train`` ->
two branches, each ``Prune`` (zero the smallest weights of the last layer, by a
different amount) -> ``Train``. Each repetition, alternating which goes first, times:

- ``dagger``: ``exp.run()`` of that tree in a new folder (every state computed
  and stored);
- ``loop``: the same recipe code in a hand-written loop: the model is built and
  trained, then for each branch deep-copied on the device, pruned and trained,
  and every state's ``state_dict`` written with ``torch.save``.

Then, on the last repetition's states:

- ``restore_s``: ``restore(map_location=device)`` of a leaf state against
  ``torch_load_s``: ``torch.load(map_location=device)`` of the loop's file of the
  same state;
- ``cpu_bit_identical``: ``restore(map_location="cpu")`` of every state equals,
  tensor for tensor and bit for bit, the device restore moved to the CPU;
- ``prune_shared_bytes``: bytes of tensor blobs a pruned child shares on disk with
  its parent (every layer but the last; 0 would mean no sharing).

Targets (issue 20 item 2): ``run_ratio`` (dagger / loop) <= 1.2 and
``restore_ratio`` (restore / torch.load) <= 1.2, on a GPU.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from functools import partial

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import bench_folder, emit, repeat_env  # noqa: E402

import dagger as dg  # noqa: E402

DEPTH = 4
STEPS = 3
BATCH = 64


def width_for(params: float) -> int:
    """Hidden width of a ``DEPTH``-layer square MLP with about ``params`` parameters."""
    return max(8, int((params / DEPTH) ** 0.5))


def build_model(width: int, device: str, seed: int):
    import torch

    torch.manual_seed(seed)
    layers = []
    for i in range(DEPTH):
        layers.append(torch.nn.Linear(width, width))
        if i < DEPTH - 1:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers).to(device)


def train(model, steps: int, lr: float, seed: int) -> None:
    import torch

    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    width = model[0].in_features
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(steps):
        x = torch.randn(BATCH, width, device=device, generator=gen)
        loss = model(x).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def prune_last(model, amount: float) -> None:
    """Zero the ``amount`` smallest-magnitude weights of the last layer; every other layer is left as it is."""
    import torch

    with torch.no_grad():
        w = model[-1].weight
        k = max(1, int(w.numel() * amount))
        threshold = w.abs().flatten().kthvalue(k).values
        w[w.abs() <= threshold] = 0.0


class Net(dg.ExperimentState):
    PROPERTIES = ["width", "device"]
    NONHASHED_ATTRIBUTES = ["model"]

    def initialize_state(self, **kwargs):
        self.model = build_model(self.width, self.device, 0)


class Train(dg.Recipe):
    PROPERTIES = ["steps", "lr", "seed"]

    def run(self, state):
        train(state.model, self.steps, self.lr, self.seed)
        return state


class Prune(dg.Recipe):
    PROPERTIES = ["amount"]

    def run(self, state):
        prune_last(state.model, self.amount)
        return state


BRANCHES = [(0.3, 11), (0.6, 12)]


def define(folder: str, width: int, device: str):
    exp = dg.Experiment(folder, state_class=Net)
    root = exp.spawn_new_tree(width=width, device=device)
    trained = Train(steps=STEPS, lr=0.01, seed=1)(root)
    leaves, pruned = [], []
    for amount, seed in BRANCHES:
        p = Prune(amount=amount)(trained)
        pruned.append(p)
        leaves.append(Train(steps=STEPS, lr=0.01, seed=seed)(p))
    return exp, [root, trained, *pruned, *leaves], trained, pruned, leaves


def dagger_side(folder: str, width: int, device: str) -> tuple[float, object]:
    exp, states, trained, pruned, leaves = define(folder, width, device)
    t = time.perf_counter()
    report = exp.run(progress=False)
    took = time.perf_counter() - t
    if len(report.computed) != len(states):
        raise SystemExit(f"dagger computed {len(report.computed)} of {len(states)} states: {report}")
    return took, (exp, states, trained, pruned, leaves)


def loop_side(folder: str, width: int, device: str) -> tuple[float, list[str]]:
    import torch

    os.makedirs(folder, exist_ok=True)
    t = time.perf_counter()
    files = []
    model = build_model(width, device, 0)
    torch.save(model.state_dict(), files_append(files, folder, "root"))
    train(model, STEPS, 0.01, 1)
    torch.save(model.state_dict(), files_append(files, folder, "trained"))
    for amount, seed in BRANCHES:
        branch = copy.deepcopy(model)  # on the device
        prune_last(branch, amount)
        torch.save(branch.state_dict(), files_append(files, folder, f"pruned-{amount}"))
        train(branch, STEPS, 0.01, seed)
        torch.save(branch.state_dict(), files_append(files, folder, f"leaf-{amount}"))
        del branch
    took = time.perf_counter() - t
    return took, files


def files_append(files: list[str], folder: str, name: str) -> str:
    path = os.path.join(folder, f"{name}.pt")
    files.append(path)
    return path


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def blob_list(exp, sha: str) -> list[tuple[str, int]]:
    _, raw = exp.records.read_pickle(sha)
    return [tuple(b) for b in json.loads(raw.split(b"\n", 1)[0]).get("blobs", [])]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--params", type=float, default=1e8)
    parser.add_argument("--repeat", type=int, default=repeat_env(3))
    parser.add_argument("--dir", default=None)
    args = parser.parse_args(argv)
    base_result = {"workload": "gpu_tree", "device": args.device, "params": int(args.params)}
    try:
        import torch
    except ImportError:
        emit({**base_result, "skipped": "no torch"})
        return base_result
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        result = {**base_result, "skipped": "no CUDA", "gpu": "not measured: no GPU lent"}
        emit(result)
        return result
    width = width_for(args.params)
    params = DEPTH * (width * width + width)
    base = tempfile.mkdtemp(prefix="dagger-gpu-tree-", dir=bench_folder(args.dir))
    times: dict[str, list[float]] = {"dagger": [], "loop": [], "restore": [], "torch_load": []}
    try:
        last = files = None
        for rep in range(args.repeat):
            steps = [("dagger", partial(dagger_side, os.path.join(base, f"exp-{rep}"), width, args.device)),
                     ("loop", partial(loop_side, os.path.join(base, f"loop-{rep}"), width, args.device))]
            if rep % 2:
                steps.reverse()
            for name, fn in steps:
                gc.collect()
                took, out = fn()
                times[name].append(took)
                if name == "dagger":
                    last = out
                else:
                    files = out
        exp, states, trained, pruned, leaves = last  # type: ignore[misc]
        leaf_sha = leaves[0].sha()
        leaf_file = files[3]  # type: ignore[index]  # root, trained, pruned-0.3, leaf-0.3, ...
        for rep in range(args.repeat):
            steps = [("restore", lambda: dg.Experiment.restore(exp.directory).graph.node(leaf_sha)),
                     ("torch_load", None)]
            if rep % 2:
                steps.reverse()
            for name, node in steps:
                gc.collect()
                t = time.perf_counter()
                if name == "restore":
                    node().restore(map_location=args.device)  # type: ignore[misc]
                else:
                    torch.load(leaf_file, map_location=args.device)
                _sync(args.device)
                times[name].append(time.perf_counter() - t)
        # Bit-identical on the CPU, for every state; and what a pruned child shares with its parent.
        identical = True
        graph = dg.Experiment.restore(exp.directory).graph
        for s in states:
            on_cpu = graph.node(s.sha()).restore(map_location="cpu").model.state_dict()
            on_dev = dg.Experiment.restore(exp.directory).graph.node(s.sha()).restore(map_location=args.device)
            for k, v in on_dev.model.state_dict().items():
                a, b = on_cpu[k], v.detach().to("cpu")
                if a.device.type != "cpu" or a.dtype != b.dtype or not torch.equal(a.view(torch.uint8), b.view(torch.uint8)):
                    identical = False
        parent_blobs = set(blob_list(exp, trained.sha()))
        shared = [set(blob_list(exp, p.sha())) & parent_blobs for p in pruned]
        shared_bytes = min(sum(size for _, size in s) for s in shared)
        last_layer_bytes = (width * width + width) * 4
    finally:
        shutil.rmtree(base, ignore_errors=True)
    run_ratio = statistics.median(a / b for a, b in zip(times["dagger"], times["loop"], strict=True))
    restore_ratio = statistics.median(a / b for a, b in zip(times["restore"], times["torch_load"], strict=True))
    result = {
        **base_result,
        "params": params,
        "width": width,
        "model_mib": params * 4 / 2**20,
        "states": len(states),
        "repeat": args.repeat,
        **{f"{k}_s": statistics.median(v) for k, v in times.items()},
        "run_ratio": run_ratio,
        "restore_ratio": restore_ratio,
        "cpu_bit_identical": identical,
        "prune_shared_bytes": shared_bytes,
        "prune_shared_fraction": shared_bytes / (params * 4 - last_layer_bytes),
        "target_ratio": 1.2,
        "meets_target": run_ratio <= 1.2 and restore_ratio <= 1.2 and identical and shared_bytes > 0,
        "runs": {k: [round(x, 4) for x in v] for k, v in times.items()},
    }
    if not args.device.startswith("cuda"):
        result["note"] = "run on the CPU to check the script; the targets are for a GPU"
    emit(result)
    return result


if __name__ == "__main__":
    main()
