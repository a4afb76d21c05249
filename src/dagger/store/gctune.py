"""Python garbage-collector tuning for building many long-lived objects at once.

Opening, indexing or running a large experiment builds tens of thousands of
dicts and lists that all stay alive; the cyclic collector would scan them again
and again for nothing. :func:`paused_gc` pauses it around such a build;
:func:`long_lived_build` also moves what was built to the oldest generation.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def paused_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector while building many objects that all stay alive.

    Each collection on the way would scan them again for nothing (a third of
    the time of opening a 10,000-state experiment). It runs again afterwards,
    unless it was off already.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@contextmanager
def long_lived_build() -> Iterator[None]:
    """Build many objects that all live until the run ends: collector paused, then none of them scanned.

    Afterwards they go straight to the oldest generation (``gc.freeze`` then
    ``gc.unfreeze``: two list splices). Left young, the collector would scan all
    of them in each younger generation and then count them towards a full
    collection (in a cold run of 2,000 states, 55 ms: a tenth of the run).
    Nothing is pinned: any full collection (a recipe's ``gc.collect()``) still
    scans them. Young garbage made before is collected first, as it soon would
    have been. Skipped when the process uses ``gc.freeze`` itself.
    """
    if not gc.isenabled():
        yield
        return
    gc.collect(0)
    with paused_gc():
        yield
        if not gc.get_freeze_count():  # (a build that raised leaves its objects young)
            gc.freeze()
            gc.unfreeze()
