"""Test helpers shipped with dagger, so that third-party stores can reuse dagger's own tests.

``dagger.testing.store.StoreTests`` is the conformance suite every
:class:`~dagger.store.Store` backend must pass; see its docstring. It needs
pytest (and hypothesis), which dagger itself does not.
"""

from __future__ import annotations

__all__ = ["StoreTests"]


def __getattr__(name: str) -> object:
    if name == "StoreTests":
        from dagger.testing.store import StoreTests

        return StoreTests
    raise AttributeError(name)
