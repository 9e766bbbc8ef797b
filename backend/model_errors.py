"""Why a model can't be used: the errors the model files (backend/model_files.py), the loaders and the engine
raise alike.

Each carries a painter-readable message and the protocol error code the server reports it under. Kept apart
from the model files so that the engine can raise and catch them without importing them or the loaders.
"""

from __future__ import annotations


class ModelError(Exception):
    """A model can't be used; the message tells a painter what is wrong and what to do."""

    code = "model_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ModelNotFoundError(ModelError):
    code = "model_not_found"


class UnsafeModelNameError(ModelError):
    code = "unsafe_name"


class NoCheckpointError(ModelNotFoundError):
    """The store has no checkpoint at all: the painter has to put one in place first."""

    code = "no_model"
