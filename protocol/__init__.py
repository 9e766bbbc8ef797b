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
    MAX_CONTROLS,
    PROTOCOL_VERSION,
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
from .registry import (
    CONTROL_KINDS,
    IMAGE,
    KEYPOINTS,
    MODEL_FAMILIES,
    MODES,
    SAMPLERS,
    ControlKind,
    Sampler,
    family_label,
    family_native_side,
    family_reference_kinds,
    pick_controlnet,
    sampler_label,
)
from .upscale import MAX_UPSCALE_SIDE, UPSCALE, UpscaleParam

__all__ = [
    "CLIENT_MESSAGES", "CONTROL_KINDS", "DEFAULT_PORT", "IMAGE", "KEYPOINTS", "MAX_BATCH", "MAX_CONTROLS",
    "MAX_UPSCALE_SIDE", "MODEL_FAMILIES", "MODES", "PROTOCOL_VERSION", "SAMPLERS", "SERVER_MESSAGES",
    "UPSCALE", "Accepted", "Bounds", "Cancel", "Cancelled", "ControlKind", "ControlParam", "Error",
    "ErrorCode", "Hello", "ImageEncoding", "ImageFrame", "ImageSpec", "InpaintParam", "JobParams",
    "JobRequest", "Limits", "ListModels", "LoraParam", "Message", "ModelList", "Progress", "ProtocolError",
    "Result", "Sampler", "UpscaleParam", "Welcome", "bgra_to_rgba", "decode_frame", "decode_message",
    "encode_frame", "encode_message", "encode_png", "family_label", "family_native_side",
    "family_reference_kinds", "pick_controlnet", "result_slot", "sampler_label",
]  # fmt: skip
