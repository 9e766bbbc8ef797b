"""Textual-inversion embeddings from the files painters download for A1111 and ComfyUI.

Layouts read (each vector as wide as the text encoder's token embeddings):
- A1111 `.pt` (torch.save): `{"string_to_param": {"*": n x D}, "name": ..., "step": ..., ...}`, read with
  `torch.load(weights_only=True)`, which builds tensors and plain containers and refuses pickled code;
- A1111 `.safetensors`: `{"emb_params": n x D}`;
- SDXL: `{"clip_l": n x 768, "clip_g": n x 1280}`, one set of vectors per text encoder;
- diffusers' `learned_embeds`: `{token: D or n x D}`, a single tensor under any name (also a bare tensor).

n is how many tokens' places the embedding takes in the prompt (1 for a single-vector one). An embedding
serves a text encoder (its role: `clip_l` for SD1.5's and SDXL's first, `clip_g` for SDXL's second) with the
vectors made for that role, else with its one set of vectors where their width fits the encoder.
"""

from __future__ import annotations

import pickle
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from backend.loading.files import PICKLE_SUFFIXES, read_tensors
from backend.loading.stamps import FileStamp, file_stamp
from backend.model_errors import ModelError

ROLES = ("clip_l", "clip_g")  # the text encoders' names in SDXL embedding files
A1111_PARAMS = "string_to_param"
A1111_SAFETENSORS = "emb_params"
MAX_VECTORS = 75  # a prompt holds 75 tokens between its start and end tokens
CACHED_FILES = 64


@dataclass(frozen=True, eq=False)  # eq=False: tensors have no yes-or-no equality
class TextualInversion:
    """One embedding file's vectors (float32, on the CPU), and the file version they were read from."""

    name: str
    stamp: FileStamp | None
    per_role: Mapping[str, torch.Tensor]  # role -> n x D, for files made for several encoders (SDXL)
    shared: torch.Tensor | None = None  # n x D, for files with one set of vectors

    def vectors(self, role: str, width: int) -> torch.Tensor | None:
        """The vectors for the text encoder of this role and token width; None when none fit it."""
        found = self.per_role.get(role, self.shared)
        return found if found is not None and found.shape[-1] == width else None

    def widths(self) -> str:
        """What the file holds, for messages: "768-wide vectors", "clip_l 768 and clip_g 1280"."""
        if self.shared is not None:
            return f"{self.shared.shape[-1]}-wide vectors"
        return " and ".join(f"{role} {vectors.shape[-1]}" for role, vectors in self.per_role.items())


class EmbeddingFiles:
    """Reads embedding files once per file version (backend/loading/stamps.py); thread-safe."""

    def __init__(self, max_files: int = CACHED_FILES) -> None:
        self.max_files = max_files
        self.loads = 0  # files read from disk: lets tests prove a cached one is not read again
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, TextualInversion] = OrderedDict()

    def load(self, path: Path, name: str) -> TextualInversion:
        stamp = file_stamp(path)
        key = str(path)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None and cached.stamp == stamp and stamp is not None:
                self._cache.move_to_end(key)
                return cached
        loaded = read_embedding(path, name, stamp)
        with self._lock:
            self.loads += 1
            self._cache[key] = loaded
            self._cache.move_to_end(key)
            while len(self._cache) > self.max_files:
                self._cache.popitem(last=False)
        return loaded


def read_embedding(path: Path, name: str, stamp: FileStamp | None = None) -> TextualInversion:
    """The embedding in `path` (module docstring's layouts); ModelError naming `name` for anything else."""
    what = f"Embedding {name!r}"
    if path.suffix.lower() in PICKLE_SUFFIXES:
        data: Any = _load_pickle(path, what)
    else:
        data = read_tensors(path, what)
    if isinstance(data, torch.Tensor):
        return TextualInversion(name, stamp, {}, _as_vectors(data, what))
    if not isinstance(data, dict):
        raise ModelError(f"{what} holds no embedding vectors.")
    params = data.get(A1111_PARAMS)
    if isinstance(params, dict) and params:
        # A1111 trains one placeholder, "*"; take the first set whatever its key.
        return TextualInversion(name, stamp, {}, _as_vectors(next(iter(params.values())), what))
    per_role = {role: _as_vectors(data[role], what) for role in ROLES if role in data}
    if per_role:
        counts = {vectors.shape[0] for vectors in per_role.values()}
        if len(counts) > 1:
            raise ModelError(f"{what} has a different number of vectors for each text encoder.")
        return TextualInversion(name, stamp, per_role)
    if A1111_SAFETENSORS in data:
        return TextualInversion(name, stamp, {}, _as_vectors(data[A1111_SAFETENSORS], what))
    tensors = [value for value in data.values() if isinstance(value, torch.Tensor)]
    if len(tensors) == 1:  # diffusers' {token: vectors}
        return TextualInversion(name, stamp, {}, _as_vectors(tensors[0], what))
    raise ModelError(
        f"{what} is not a textual-inversion embedding this backend reads (A1111's string_to_param or "
        "emb_params, SDXL's clip_l and clip_g, or a single tensor)."
    )


def _load_pickle(path: Path, what: str) -> Any:
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ModelError(
            f"{what} ({path.name}) holds Python objects besides its vectors, which are not loaded for safety "
            "(or is damaged). Use a .safetensors version of it."
        ) from error
    except Exception as error:  # garbage makes the unpickler raise many kinds of errors
        raise ModelError(f"{what} ({path.name}) is not a readable PyTorch file ({error}).") from error


def _as_vectors(value: Any, what: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or not value.is_floating_point() or value.ndim not in (1, 2):
        shape = list(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ModelError(f"{what}: its vectors are {shape}, not a list of float vectors.")
    vectors = value.detach().to("cpu", torch.float32).reshape(-1, value.shape[-1])
    if not 1 <= vectors.shape[0] <= MAX_VECTORS:
        raise ModelError(f"{what} has {vectors.shape[0]} vectors; a prompt holds 1 to {MAX_VECTORS}.")
    if not torch.isfinite(vectors).all():
        raise ModelError(f"{what} holds vectors that are not finite numbers: the file is damaged.")
    return vectors.contiguous()
