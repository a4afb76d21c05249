"""register_encoder: as a decorator, as a direct call with a function, and clear errors on misuse."""

from __future__ import annotations

import gc
import warnings

import pytest

import dagger as dg
from dagger import hashing
from dagger.errors import UnhashableError


class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y


def test_decorator_form_registers():
    class Config:
        def __init__(self, depth):
            self.depth = depth

    @dg.register_encoder(Config)
    def encode(cfg):
        return {"depth": cfg.depth}

    assert encode(Config(3)) == {"depth": 3}  # the decorator gives the function back
    assert hashing.digest(Config(1)) == hashing.digest(Config(1))
    assert hashing.digest(Config(1)) != hashing.digest(Config(2))


def test_direct_call_with_a_function_registers():
    class Span:
        def __init__(self, lo, hi):
            self.lo, self.hi = lo, hi

    with pytest.raises(UnhashableError):
        hashing.digest(Span(0, 1))
    fn = lambda s: (s.lo, s.hi)  # noqa: E731
    assert dg.register_encoder(Span, fn) is fn
    assert hashing.digest(Span(0, 1)) == hashing.digest(Span(0, 1))
    assert hashing.digest(Span(0, 1)) != hashing.digest(Span(0, 2))


def test_class_alone_warns_and_hashing_names_the_mistake():
    class Box:
        def __init__(self, v):
            self.v = v

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dg.register_encoder(Box)  # the decorator it returns is dropped: nothing is registered
        gc.collect()
    assert any("registered nothing" in str(w.message) and "Box" in str(w.message) for w in caught)
    assert all(issubclass(w.category, dg.DaggerWarning) for w in caught)
    with pytest.raises(UnhashableError, match=r"register_encoder\(Box\) was called without an encoder function"):
        hashing.digest(Box(1))
    dg.register_encoder(Box, lambda b: b.v)  # the fix the message names works
    assert hashing.digest(Box(1)) != hashing.digest(Box(2))


def test_misuses_are_type_errors_that_name_the_fix():
    def encode(p):
        return (p.x, p.y)

    with pytest.raises(TypeError, match="takes the class first"):
        dg.register_encoder(encode)  # @dg.register_encoder without the class
    with pytest.raises(TypeError, match="must be a function"):
        dg.register_encoder(Point, 3)
    decorator = dg.register_encoder(Point)
    with pytest.raises(TypeError, match="returns a decorator for the encoder function"):
        decorator(1, 2)  # e.g. `@dg.register_encoder` on a class, then instantiating it
    decorator(encode)
    assert hashing.digest(Point(1, 2)) != hashing.digest(Point(2, 1))
