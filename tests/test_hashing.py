"""Canonical, typed, exact hashing (DESIGN §2)."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import fractions
import os
import pathlib
import struct
import subprocess
import sys
import uuid
from collections import OrderedDict, namedtuple

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from paperdefs import State, TrainRecipe

import dagger as dg
from dagger import hashing
from dagger.errors import UnhashableError

HERE = os.path.dirname(__file__)

# ---- pinned digests ---------------------------------------------------------------
#
# These digests must NEVER change within FORMAT_VERSION 1: every user's cache is
# keyed by them, so a change here silently turns every stored state into a cache
# miss (or worse, mixes old and new identities). If a change to hashing.py makes
# this test fail, the change is wrong, or it needs a FORMAT_VERSION bump and a
# migration. Do not "fix" this test by pasting new digests.

PINNED_VALUES = [
    (None, "8ce86a6ae65d3692e7305e2c58ac62eebd97d3d943e093f577da25c36988246b"),
    (1, "ec1eadf3809680e4e1dedaaaca0f16d4c03ea5105350999822e655ad9b31250e"),
    (0.1, "0cbba2e33c65870a204f2d8b6abeab36b0a26a9e4672599a36075dd4c511f61f"),
    ("dagger", "4bbaea8b086ef70f2b686b20fb9499eb7d6f93b80734e366aa60e29258265017"),
    ((1, "a", 2.5, None, True), "2af14246518d22c25c6db3354b3789994a1dcfabc44b41bf0580bc5420a4d1d0"),
    ({"lr": 0.1, "epochs": [1, 2, 3]}, "bd42148fe911748025f1bdb241ce912bc36cc75f5c161e37abd476362438505d"),
    (frozenset({"a", "b"}), "aed5b9c7be2db3203b04aaf70a43fd6f073c679cae6bfe2060d756306a3df37a"),
    (b"\x00\x01", "83c984d548f0c3eacbc775d26786fa039b3959d713c6ce557215a9ba7cb6e4fa"),
]
# The paper's Listing 2 root (State, cifar-10, vgg-11) and its TrainRecipe(nb_epochs=100, lr=0.1) child.
PINNED_ROOT = "5d422521748cd8faefe0bc62ea7916454fd176a7378587bf6aef647dcdfbace5"
PINNED_CHILD = "a18cefd669a73acc63c958f017372dbb333ee6f25588e42ed4ae67650f58a5a4"


@pytest.mark.parametrize(("value", "expected"), PINNED_VALUES, ids=[repr(v)[:20] for v, _ in PINNED_VALUES])
def test_pinned_value_digests_never_change(value, expected):
    assert hashing.digest(value) == expected


def test_pinned_state_hashes_never_change(exp_dir):
    exp = dg.Experiment(exp_dir, state_class=State)
    root = exp.spawn_new_tree(dataset_name="cifar-10", model_name="vgg-11")
    child = TrainRecipe(nb_epochs=100, lr=0.1)(root)
    assert root.sha() == PINNED_ROOT
    assert child.sha() == PINNED_CHILD


def test_state_hash_is_built_from_parent_and_recipe():
    props = {"dataset_name": "cifar-10", "model_name": "vgg-11"}
    assert hashing.root_hash("paperdefs.State", props) == PINNED_ROOT
    recipe = hashing.recipe_hash("paperdefs.TrainRecipe", {"nb_epochs": 100, "lr": 0.1}, 0)
    assert hashing.child_hash(PINNED_ROOT, recipe) == PINNED_CHILD


def test_identity_ignores_directory_and_tags(tmp_path):
    shas = []
    for i, tag in enumerate(["a", "b"]):
        exp = dg.Experiment(str(tmp_path / f"e{i}"), state_class=State)
        root = exp.spawn_new_tree(dataset_name="cifar-10", model_name="vgg-11")
        with exp.tag(tag):
            shas.append(TrainRecipe(nb_epochs=100, lr=0.1)(root).sha())
    assert shas == [PINNED_CHILD, PINNED_CHILD]


# ---- exactness and typing ------------------------------------------------------------


@pytest.mark.parametrize(("a", "b"), [(1e-9, 2e-9), (0.1, 0.1000000001), (0.0, -0.0), (1.0, 1.0 + 2**-52)])
def test_distinct_floats_never_collide(a, b):
    assert hashing.digest(a) != hashing.digest(b)
    assert hashing.recipe_hash("R", {"lr": a}, 0) != hashing.recipe_hash("R", {"lr": b}, 0)


@given(st.floats(allow_nan=False), st.floats(allow_nan=False))
def test_float_digest_equal_iff_same_bits(a, b):
    same = np.float64(a).tobytes() == np.float64(b).tobytes()
    assert (hashing.digest(a) == hashing.digest(b)) == same


def _nan_with_payload(bits: int = 0x7FF8_0000_0000_0001) -> float:
    return struct.unpack("<d", struct.pack("<Q", bits))[0]


def test_all_nans_are_one_value():
    assert hashing.digest(float("nan")) == hashing.digest(-float("nan"))
    assert hashing.digest(float("nan")) == hashing.digest(_nan_with_payload())


def test_all_nans_are_one_value_in_numpy_and_torch_too():
    """As for Python floats, a NaN's sign and payload never change a hash (docs/reproducibility.md)."""
    odd = _nan_with_payload()
    assert np.float64(odd).tobytes() != np.float64(np.nan).tobytes()  # the payload survives in numpy
    for dtype in ("<f8", ">f8", "f4", "f2"):
        plain = np.array([1.0, np.nan, 3.0], dtype=dtype)
        assert hashing.digest(plain) == hashing.digest(np.array([1.0, -np.nan, 3.0], dtype=dtype)), dtype
        assert hashing.digest(plain) != hashing.digest(np.array([1.0, np.nan, 4.0], dtype=dtype)), dtype
    assert hashing.digest(np.array([1.0, np.nan])) == hashing.digest(np.array([1.0, odd]))
    assert hashing.digest(np.float64(np.nan)) == hashing.digest(np.float64(-np.nan))
    assert hashing.digest(np.float64(np.nan)) == hashing.digest(np.float64(odd))
    assert hashing.digest(np.float32(np.nan)) == hashing.digest(np.float32(-np.nan))
    complex_nan = np.array([complex(1, np.nan)])
    assert hashing.digest(complex_nan) == hashing.digest(np.array([complex(1, -np.nan)]))
    assert hashing.digest(complex_nan) != hashing.digest(np.array([complex(2, np.nan)]))
    assert hashing.digest(np.complex128(complex(1, np.nan))) == hashing.digest(np.complex128(complex(1, -np.nan)))
    tensor = torch.tensor([1.0, float("nan")])
    assert hashing.digest(tensor) == hashing.digest(torch.tensor([1.0, -float("nan")]))
    assert hashing.digest(tensor) != hashing.digest(torch.tensor([2.0, float("nan")]))


def test_numpy_nan_keeps_the_digest_it_had():
    # Pinned: the canonical NaN (np.nan as numpy stores it) hashes as before the NaN rule, so
    # cached states with NaN-holding arrays keep their identity.
    assert hashing.digest(np.array([1.0, np.nan])) == (
        "9764413900fa5bd3b9e618ab6cdf4ae96dad21a65887799e1cb880bea8ca821e"
    )


def test_empty_multidimensional_arrays_hash():
    assert hashing.digest(np.zeros((0, 3))) != hashing.digest(np.zeros((3, 0)))
    assert hashing.digest(np.zeros((0, 3))) == hashing.digest(np.zeros((0, 3)))


def test_one_and_its_lookalikes_differ():
    values = [1, 1.0, True, "1", b"1", (1,), [1], np.int64(1), np.float32(1), complex(1, 0), decimal.Decimal(1)]
    digests = [hashing.digest(v) for v in values]
    assert len(set(digests)) == len(values)
    assert hashing.digest(0) != hashing.digest(False) != hashing.digest(None)


def test_list_and_tuple_differ_and_nesting_matters():
    assert hashing.digest([1, 2]) != hashing.digest((1, 2))
    assert hashing.digest([[1], 2]) != hashing.digest([1, [2]])
    assert hashing.digest(["ab", "c"]) != hashing.digest(["a", "bc"])


def test_big_and_negative_ints():
    values = [0, -1, 255, 256, -256, 2**64, -(2**64), 10**40]
    assert len({hashing.digest(v) for v in values}) == len(values)


_keys = st.one_of(st.text(max_size=8), st.integers(), st.booleans(), st.floats(allow_nan=False))
_leaves = st.one_of(st.none(), st.integers(), st.floats(allow_nan=False), st.text(max_size=8), st.booleans())


@settings(max_examples=75, deadline=None)
@given(
    st.dictionaries(st.text(max_size=6), st.one_of(_leaves, st.lists(_leaves, max_size=3)), max_size=12), st.randoms()
)
def test_dict_order_never_matters(d, rnd):
    items = list(d.items())
    rnd.shuffle(items)
    shuffled = dict(items)
    assert hashing.digest(d) == hashing.digest(shuffled)
    assert hashing.digest({"outer": d}) == hashing.digest({"outer": shuffled})
    assert hashing.digest(OrderedDict(items)) == hashing.digest(OrderedDict(d.items()))


@settings(max_examples=75, deadline=None)
@given(st.lists(_keys, max_size=20, unique=True), st.randoms())
def test_set_order_never_matters(members, rnd):
    shuffled = list(members)
    rnd.shuffle(shuffled)
    a, b = set(), set()
    for m in members:
        a.add(m)
    for m in shuffled:
        b.add(m)
    assert hashing.digest(a) == hashing.digest(b)
    assert hashing.digest(frozenset(members)) == hashing.digest(frozenset(shuffled))
    assert hashing.digest(a) != hashing.digest(frozenset(a))  # set and frozenset are distinct types


@settings(max_examples=50, deadline=None)
@given(st.dictionaries(st.text(max_size=4), st.integers(), min_size=1, max_size=6))
def test_changing_one_value_changes_the_dict_digest(d):
    key = sorted(d)[0]
    changed = dict(d)
    changed[key] = d[key] + 1
    assert hashing.digest(d) != hashing.digest(changed)


def test_collections_differ_by_membership():
    assert hashing.digest({1, 2}) != hashing.digest({1, 3})
    assert hashing.digest({"a": 1}) != hashing.digest({"a": 2})
    assert hashing.digest({"a": 1}) != hashing.digest({"b": 1})
    assert hashing.digest({"a": 1, "b": 2}) != hashing.digest({"a": 2, "b": 1})


_SUBPROCESS_CODE = """
import sys
sys.path.insert(0, {here!r})
from dagger import hashing
print(hashing.digest({{"set": {{"alpha", "beta", "gamma", "delta", "epsilon"}}, "d": {{"x": 1, "y": (2, 3)}}}}))
print(hashing.root_hash("paperdefs.State", {{"dataset_name": "cifar-10", "model_name": "vgg-11"}}))
print(hashing.digest(frozenset({{("a", 1), ("b", 2), ("c", 3)}})))
assert "numpy" not in sys.modules  # numpy's encoders are registered lazily, on first use
import numpy as np
print(hashing.digest({{"w": np.arange(6, dtype=np.float32).reshape(2, 3), "n": np.int64(3)}}))
"""


def test_hashes_identical_across_pythonhashseed():
    code = _SUBPROCESS_CODE.format(here=HERE)
    outputs = []
    for seed in ("0", "1", "12345", "random"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        outputs.append(out.stdout)
    assert len(set(outputs)) == 1
    lines = outputs[0].split()
    assert lines[1] == PINNED_ROOT
    assert lines[0] == hashing.digest(
        {"set": {"alpha", "beta", "gamma", "delta", "epsilon"}, "d": {"x": 1, "y": (2, 3)}}
    )
    assert lines[3] == hashing.digest({"w": np.arange(6, dtype=np.float32).reshape(2, 3), "n": np.int64(3)})


# ---- unhashable values and extension points -----------------------------------------------


class Opaque:
    def __init__(self, x):
        self.x = x


def test_unknown_object_raises_naming_type_and_fix():
    with pytest.raises(UnhashableError) as info:
        hashing.digest(Opaque(1))
    msg = str(info.value)
    assert "test_hashing.Opaque" in msg
    assert "register_encoder" in msg and "__dagger_hash__" in msg
    assert isinstance(info.value, dg.DaggerError) and isinstance(info.value, TypeError)


def test_unhashable_error_says_where_inside_a_container():
    with pytest.raises(UnhashableError) as info:
        hashing.digest({"opt": [1, Opaque(2)]})
    assert info.value.path == "['opt'][1]"
    assert "['opt'][1]" in str(info.value)


def test_object_is_never_silently_hashed():
    for value in (object(), Opaque(1), iter([1]), (x for x in [1])):
        with pytest.raises(UnhashableError):
            hashing.digest(value)


def test_register_encoder_and_subclasses():
    class Config:
        def __init__(self, depth, width):
            self.depth, self.width = depth, width

    class SubConfig(Config):
        pass

    with pytest.raises(UnhashableError):
        hashing.digest(Config(1, 2))

    @dg.register_encoder(Config)
    def _(cfg):
        return {"depth": cfg.depth, "width": cfg.width}

    assert hashing.digest(Config(1, 2)) == hashing.digest(Config(1, 2))
    assert hashing.digest(Config(1, 2)) != hashing.digest(Config(2, 1))
    assert hashing.digest(Config(1, 2)) != hashing.digest({"depth": 1, "width": 2})  # tagged by class
    assert hashing.digest(SubConfig(1, 2)) != hashing.digest(Config(1, 2))
    assert hashing.digest(SubConfig(1, 2)) == hashing.digest(SubConfig(1, 2))


def test_dagger_hash_hook():
    class Schedule:
        def __init__(self, kind, steps):
            self.kind, self.steps = kind, steps

        def __dagger_hash__(self):
            return (self.kind, self.steps)

    assert hashing.digest(Schedule("cos", 10)) == hashing.digest(Schedule("cos", 10))
    assert hashing.digest(Schedule("cos", 10)) != hashing.digest(Schedule("cos", 11))
    assert hashing.digest(Schedule("cos", 10)) != hashing.digest(("cos", 10))


def test_lambdas_rejected_and_functions_by_path():
    with pytest.raises(UnhashableError, match="lambda"):
        hashing.digest(lambda x: x)
    with pytest.raises(UnhashableError, match="lambda"):
        hashing.recipe_hash("R", {"fn": lambda: 0}, 0)
    assert hashing.digest(os.path.join) == hashing.digest(os.path.join)
    assert hashing.digest(os.path.join) != hashing.digest(os.path.split)
    assert hashing.digest(len) != hashing.digest(abs)
    assert hashing.digest(State) != hashing.digest(TrainRecipe)
    assert hashing.digest(State) != hashing.digest("paperdefs.State")


class Model:
    def __init__(self, depth):
        self.depth = depth

    def __dagger_hash__(self):
        return self.depth

    def forward(self):
        return self.depth


def test_bound_methods_hash_by_owner_and_path():
    assert hashing.digest(Model(1).forward) == hashing.digest(Model(1).forward)
    assert hashing.digest(Model(1).forward) != hashing.digest(Model(2).forward)
    assert hashing.digest(Model(1).forward) != hashing.digest(Model.forward)
    with pytest.raises(UnhashableError):
        hashing.digest(Opaque(1).__init__)


def test_self_referencing_containers_rejected():
    loop = [1]
    loop.append(loop)
    with pytest.raises(UnhashableError, match="self-referencing"):
        hashing.digest(loop)
    d: dict = {}
    d["me"] = d
    with pytest.raises(UnhashableError, match="self-referencing"):
        hashing.digest(d)


def test_shared_but_acyclic_references_are_fine():
    shared = [1, 2]
    assert hashing.digest([shared, shared]) == hashing.digest([[1, 2], [1, 2]])


@dataclasses.dataclass
class Point:
    x: float
    y: float


class Colour(enum.Enum):
    RED = 1
    BLUE = 2


class Size(enum.Enum):
    RED = 1


Pair = namedtuple("Pair", "a b")


def test_dataclass_enum_path_by_value():
    assert hashing.digest(Point(1.0, 2.0)) == hashing.digest(Point(1.0, 2.0))
    assert hashing.digest(Point(1.0, 2.0)) != hashing.digest(Point(2.0, 1.0))
    assert hashing.digest(Colour.RED) == hashing.digest(Colour(1))
    assert hashing.digest(Colour.RED) != hashing.digest(Colour.BLUE)
    assert hashing.digest(Colour.RED) != hashing.digest(Size.RED)
    assert hashing.digest(pathlib.Path("a/b")) == hashing.digest(pathlib.PurePosixPath("a") / "b")
    assert hashing.digest(pathlib.Path("a/b")) != hashing.digest(pathlib.Path("a/c"))
    assert hashing.digest(pathlib.Path("a/b")) != hashing.digest("a/b")
    assert hashing.digest(Pair(1, 2)) != hashing.digest((1, 2))
    assert hashing.digest(Pair(1, 2)) == hashing.digest(Pair(1, 2))


def test_dataclass_with_unhashable_field_names_the_field():
    with pytest.raises(UnhashableError) as info:
        hashing.digest(Point(1.0, Opaque(0)))
    assert "<Point>['y']" in info.value.path


def test_timedeltas_differ_by_one_microsecond_at_any_size():
    far = datetime.timedelta(days=200000)
    assert far.total_seconds() == (far + datetime.timedelta(microseconds=1)).total_seconds()  # floats merge them
    assert hashing.digest(far) != hashing.digest(far + datetime.timedelta(microseconds=1))
    assert hashing.digest(-far) != hashing.digest(-far - datetime.timedelta(microseconds=1))
    assert hashing.digest(far) == hashing.digest(datetime.timedelta(seconds=200000 * 86400))


def test_timedelta_digests_never_change_where_they_were_exact():
    # Pinned (see above): small timedeltas keep the encoding they always had.
    assert hashing.digest(datetime.timedelta(seconds=3)) == (
        "0c979d361f6f7a14ca1f544cc39d5e3a47644e7bbabedf4559b51ddc5eec4eb7"
    )
    assert hashing.digest(datetime.timedelta(days=3, microseconds=7)) == (
        "f8ff84125525d2151a655308013acc89acfa13e1344c80d50b466026b9d77636"
    )


def test_posix_and_windows_paths_differ():
    assert hashing.digest(pathlib.PurePosixPath("a/b")) != hashing.digest(pathlib.PureWindowsPath("a\\b"))
    assert hashing.digest(pathlib.PureWindowsPath("a\\b")) == hashing.digest(pathlib.PureWindowsPath("a/b"))
    # Pinned (see above): a POSIX path keeps its encoding.
    assert hashing.digest(pathlib.PurePosixPath("a/b")) == (
        "06c485e6beaea9f14b3ae46f8defc4e2522eea6a6f749af4b2dc1dc44cec298b"
    )


def test_other_stdlib_values():
    values = [
        datetime.date(2024, 1, 2),
        datetime.datetime(2024, 1, 2, 3, 4),
        datetime.timedelta(seconds=3),
        fractions.Fraction(1, 3),
        uuid.UUID(int=5),
        range(3),
        range(4),
        bytearray(b"ab"),
        complex(1, 2),
        1.5 + 0j,
    ]
    digests = [hashing.digest(v) for v in values]
    assert len(set(digests)) == len(values)
    assert hashing.digest(bytearray(b"ab")) == hashing.digest(memoryview(b"ab"))
    assert hashing.digest(fractions.Fraction(2, 6)) == hashing.digest(fractions.Fraction(1, 3))


def test_subclass_of_builtin_is_tagged():
    class MyList(list):
        pass

    assert hashing.digest(MyList([1])) != hashing.digest([1])
    assert hashing.digest(MyList([1])) == hashing.digest(MyList([1]))


# ---- numpy and torch --------------------------------------------------------------------------


def test_numpy_arrays_hash_by_dtype_shape_and_bytes():
    a = np.arange(12, dtype=np.float64)
    assert hashing.digest(a) == hashing.digest(a.copy())
    assert hashing.digest(a) != hashing.digest(a.astype(np.float32))
    assert hashing.digest(a) != hashing.digest(a.reshape(3, 4))
    assert hashing.digest(a.reshape(3, 4)) != hashing.digest(a.reshape(4, 3))
    b = a.copy()
    b[5] = np.nextafter(b[5], 100)
    assert hashing.digest(a) != hashing.digest(b)
    m = a.reshape(3, 4)
    assert hashing.digest(m.T) == hashing.digest(np.ascontiguousarray(m.T))  # layout does not matter
    assert hashing.digest(np.arange(3, dtype=">i4")) != hashing.digest(np.arange(3, dtype="<i4"))
    assert hashing.digest(a) != hashing.digest(a.tolist())


def test_numpy_object_arrays_scalars_and_dtypes():
    obj = np.array(["a", 1, None], dtype=object)
    assert hashing.digest(obj) == hashing.digest(np.array(["a", 1, None], dtype=object))
    assert hashing.digest(obj) != hashing.digest(np.array(["a", 2, None], dtype=object))
    with pytest.raises(UnhashableError):
        hashing.digest(np.array([Opaque(1)], dtype=object))
    assert hashing.digest(np.float32(0.5)) != hashing.digest(np.float64(0.5))
    assert hashing.digest(np.dtype("f4")) != hashing.digest(np.dtype("f8"))


def test_torch_tensors_hash_by_dtype_shape_and_bytes():
    t = torch.arange(12, dtype=torch.float32)
    assert hashing.digest(t) == hashing.digest(t.clone())
    assert hashing.digest(t) != hashing.digest(t.double())
    assert hashing.digest(t) != hashing.digest(t.reshape(3, 4))
    changed = t.clone()
    changed[0] = 0.5
    assert hashing.digest(t) != hashing.digest(changed)
    assert hashing.digest(t) != hashing.digest(t.numpy())
    param = torch.nn.Parameter(t.clone())
    assert hashing.digest(param.detach()) == hashing.digest(t)
    assert hashing.digest(t.reshape(3, 4).T) == hashing.digest(t.reshape(3, 4).T.contiguous())
    assert hashing.digest(torch.empty(0)) != hashing.digest(torch.empty(0, dtype=torch.int64))
    assert hashing.digest(torch.float32) != hashing.digest(torch.float64)
    assert hashing.digest(torch.device("cpu")) == hashing.digest(torch.device("cpu"))
    dense = torch.tensor([[0.0, 1.0], [2.0, 0.0]])
    assert hashing.digest(dense.to_sparse()) == hashing.digest(dense)


def test_recipe_property_errors_name_the_property():
    with pytest.raises(UnhashableError) as info:
        TrainRecipe(nb_epochs=1, lr=Opaque(1)).identity()
    assert "'lr'" in str(info.value) and "Opaque" in str(info.value)
    assert info.value.path.startswith("TrainRecipe.lr")


# ---- functools.partial (the reference tutorial's pruning schemas) ---------------------------

# Pinned like the digests above: a partial hashes by its function's import path and its bound
# arguments, so a schema of partials keyed by tuples has one identity in every process.
PINNED_PARTIAL = "2bb2abcc889e944cd6d146852cd822183245d80c34d00c6dc62caece92c03080"
PINNED_SCHEMA = "eafee0456f5a8fe2787ff8e8e8b489b39f7dd4da95ee6fed71eda9f252c6d2cc"


def test_partials_hash_by_function_path_and_arguments():
    import functools
    import json

    assert hashing.digest(functools.partial(json.dumps, indent=2)) == PINNED_PARTIAL
    schema = {
        ("conv1", "weight"): functools.partial(json.dumps, indent=2),
        ("fc1", "weight"): functools.partial(json.dumps, 0.5, sort_keys=True),
    }
    assert hashing.digest(schema) == PINNED_SCHEMA
    assert hashing.digest(dict(reversed(schema.items()))) == PINNED_SCHEMA  # dicts are order-free
    # every part counts: the function, positional arguments, keyword names and values
    variants = [
        functools.partial(json.dumps, indent=3),
        functools.partial(json.dumps, indent=2.0),
        functools.partial(json.loads, indent=2),
        functools.partial(json.dumps, 2),
        functools.partial(json.dumps, separators=2),
        json.dumps,
    ]
    digests = {hashing.digest(v) for v in variants}
    assert len(digests) == len(variants) and PINNED_PARTIAL not in digests


def test_partial_of_a_lambda_is_refused_with_its_path():
    import functools

    with pytest.raises(UnhashableError, match=r"\['x'\]\.func.*lambda"):
        hashing.digest({"x": functools.partial(lambda m: m, 1)})
