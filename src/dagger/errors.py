"""Every error dagger raises derives from :class:`DaggerError`.

Where it helps, an error also derives from the builtin that callers would
naturally catch (``KeyError`` for a missing state, ``TypeError`` for a wrong
argument), so ``except KeyError`` keeps working.
"""

from __future__ import annotations

from typing import Any


class DaggerError(Exception):
    """Root of all dagger errors."""


class DaggerWarning(UserWarning):
    """Root of all dagger warnings (for example a corrupt record skipped on restore)."""


class DefinitionError(DaggerError, TypeError):
    """The experiment, a state class or a recipe is defined in a way dagger cannot use."""


class MissingPropertyError(DefinitionError):
    """A PROPERTY has no value where one is required."""


class UnknownPropertyError(DefinitionError):
    """A keyword argument names no PROPERTY of the class."""


class RecipeReturnError(DaggerError, TypeError):
    """A recipe's ``run`` returned something other than a state of the experiment's class."""


class ResultNotStorableError(DaggerError, ValueError):
    """A Function's result (or a property) has no stable JSON form to store in the metadata."""


class UnhashableError(DaggerError, TypeError):
    """A value has no stable, canonical encoding, so it cannot be part of a state's identity.

    ``path`` says where inside the hashed value the culprit sits, e.g. ``"['opt'][0]"``.
    """

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.path = path

    def __str__(self) -> str:
        return f"at {self.path}: {self.message}" if self.path else self.message


class NotAnExperimentError(DaggerError, FileNotFoundError):
    """A folder holds no dagger experiment."""


class StateClassMismatchError(DaggerError, TypeError):
    """The state class given differs from the one the experiment was created with."""


class CorruptRecordError(DaggerError, ValueError):
    """A stored file cannot be read back as what it should be."""


class FormatVersionError(CorruptRecordError):
    """A stored file was written by a newer, incompatible version of dagger."""


class UntrustedPickleError(CorruptRecordError):
    """A state's pickle is not signed by the experiment's signing key, or names another state: it was not unpickled."""


class StateNotFoundError(DaggerError, KeyError):
    """No state with that hash exists in the experiment."""

    def __str__(self) -> str:  # KeyError would otherwise print the repr of the message
        return str(self.args[0]) if self.args else ""


class InvalidHashError(DaggerError, ValueError):
    """A string given as a state hash is not one (or not a unique prefix of one)."""


class DeflatedStateError(DaggerError, AttributeError):
    """An attribute that lives only in a full state was read from a slim (deflated) one."""


class StoreError(DaggerError, OSError):
    """Writing to or reading from the store failed."""


class CodeNotFoundError(DaggerError, ImportError):
    """A stored state refers to code (its class, or a function inside it) that cannot be imported here."""


class RecipeChangedError(DaggerError):
    """Cached states were produced by recipe code that has changed since (policy ``"error"``)."""


class RunFailedError(DaggerError):
    """One or more states failed during :meth:`Experiment.run`; all others were saved.

    ``failures`` lists one record per failed state with its hash, recipe, tags
    and the cause; ``report`` is the full run report.
    """

    def __init__(self, message: str, failures: list[Any], report: Any = None) -> None:
        super().__init__(message)
        self.failures = failures
        self.report = report
