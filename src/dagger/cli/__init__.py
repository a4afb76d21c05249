"""The ``dagger`` command (step 1 of the split into a package: everything still lives in ``_common``)."""

from dagger.cli._common import _branches, _stored_files, app, main

__all__ = ["_branches", "_stored_files", "app", "main"]
