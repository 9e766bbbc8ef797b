"""The wire contract between the Krita plugin and the backend (pure stdlib, Python 3.10+).

See protocol/README.md for the specification a third-party client can implement.
"""

from __future__ import annotations

from .errors import ErrorCode, ProtocolError
from .frames import ImageEncoding, ImageFrame, bgra_to_rgba, decode_frame, encode_frame, encode_png
from .messages import (
    CLIENT_MESSAGES,
    DEFAULT_PORT,
    MAX_BATCH,
    PROTOCOL_VERSION,
    SAMPLERS,
    SERVER_MESSAGES,
    Accepted,
    Bounds,
    Cancel,
    Cancelled,
    ControlParam,
    Error,
    Hello,
    ImageSpec,
    InpaintParam,
    JobParams,
    JobRequest,
    Limits,
    ListModels,
    LoraParam,
    Message,
    ModelList,
    Progress,
    Result,
    Welcome,
    decode_message,
    encode_message,
    result_slot,
)

__all__ = [
    "CLIENT_MESSAGES", "DEFAULT_PORT", "MAX_BATCH", "PROTOCOL_VERSION", "SAMPLERS", "SERVER_MESSAGES",
    "Accepted", "Bounds", "Cancel", "Cancelled", "ControlParam", "Error", "ErrorCode", "Hello",
    "ImageEncoding", "ImageFrame", "ImageSpec", "InpaintParam", "JobParams", "JobRequest", "Limits",
    "ListModels", "LoraParam", "Message", "ModelList", "Progress", "ProtocolError", "Result", "Welcome",
    "bgra_to_rgba", "decode_frame", "decode_message", "encode_frame", "encode_message", "encode_png",
    "result_slot",
]  # fmt: skip
