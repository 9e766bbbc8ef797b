"""Error codes shared by client and server; every error a client can see has one of these codes."""

from __future__ import annotations

from enum import Enum


class ErrorCode(str, Enum):
    BAD_JSON = "bad_json"
    BAD_MESSAGE = "bad_message"
    UNKNOWN_TYPE = "unknown_type"
    BAD_FRAME = "bad_frame"
    TOO_LARGE = "too_large"
    VERSION_MISMATCH = "version_mismatch"
    UNAUTHORIZED = "unauthorized"
    NOT_READY = "not_ready"
    NO_MODEL = "no_model"
    MODEL_NOT_FOUND = "model_not_found"
    MODEL_ERROR = "model_error"
    UNSAFE_NAME = "unsafe_name"
    UNKNOWN_JOB = "unknown_job"
    DUPLICATE_JOB = "duplicate_job"
    BUSY = "busy"
    OUT_OF_MEMORY = "out_of_memory"
    INTERNAL = "internal"


# Replies stay short whatever a client sent: messages quote inputs, and inputs can be megabytes.
MAX_ERROR_MESSAGE = 1000


def clip_message(message: str) -> str:
    return message if len(message) <= MAX_ERROR_MESSAGE else message[: MAX_ERROR_MESSAGE - 3] + "..."


class ProtocolError(Exception):
    """A violation the peer can be told about, with a code and a sentence a painter can read."""

    def __init__(
        self, code: ErrorCode, message: str, job_id: str | None = None, retry_after: float | None = None
    ) -> None:
        message = clip_message(message)
        super().__init__(message)
        self.code = code
        self.message = message
        self.job_id = job_id
        self.retry_after = retry_after  # seconds after which trying again may well succeed (`busy`)

    def __repr__(self) -> str:
        return f"ProtocolError({self.code.value!r}, {self.message!r}, job_id={self.job_id!r})"
