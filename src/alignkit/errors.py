"""Exceptions with messages meant for people.

Every error a user can cause (a wrong model spec, a missing file, a server that is down, a malformed
input line) is an :class:`AlignkitError`. The CLI prints its message on one line and exits non-zero;
no traceback is shown for these.
"""

from __future__ import annotations


class AlignkitError(Exception):
    """Base class for errors caused by input, configuration or the environment."""

    exit_code = 2


class ModelSpecError(AlignkitError):
    """A model spec could not be resolved to a model (unknown alias, missing path, bad syntax)."""


class ModelLoadError(AlignkitError):
    """A model was found but could not be loaded (corrupt files, missing adapter, wrong format)."""


class BackendUnavailableError(AlignkitError):
    """An optional dependency of a backend is not installed."""

    def __init__(self, backend: str, extra: str, missing: str):
        super().__init__(
            f"the {backend!r} backend needs the package {missing!r}, which is not installed: "
            f"pip install 'alignkit[{extra}]'"
        )


class CapabilityError(AlignkitError):
    """A caller needs something the model cannot do (e.g. full-vocabulary logits from an API model)."""


class ModelConnectionError(AlignkitError):
    """A remote model server could not be reached or kept failing."""


class ContextLengthError(AlignkitError):
    """A prompt does not fit into the model's context window."""


class InputError(AlignkitError):
    """An input file or record is malformed."""
