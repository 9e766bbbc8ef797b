"""Keeps one checkpoint loaded and brings it to the requested LoRAs, strengths and VAE without reloading.

Painters change LoRA strengths and toggle LoRAs while painting; reading a 2 GB checkpoint again each time
would stall the live view for seconds, so only the checkpoint name, or its file changing on disk, forces a
reload. Everything else is re-fused in place.

Every cached model is stamped with its file's version (backend.loading.stamps) and read into memory this
process owns, so a file rewritten under a loaded model is reloaded at the next job that uses it instead of
crashing the server or silently serving the old weights.
"""

from __future__ import annotations

import gc
import logging
import math
import threading
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from backend.engine.model_choice import LoraSpec
from backend.loading.checkpoint import PipelineComponents, place_checkpoint, read_checkpoint
from backend.loading.controlnet import load_controlnet
from backend.loading.embeddings import EmbeddingFiles, TextualInversion
from backend.loading.lora import (
    TEXT_ENCODER,
    TEXT_ENCODER_2,
    UNET,
    LoraFuser,
    LoraTargets,
    LoraWeights,
    read_lora,
)
from backend.loading.sidecar import checkpoint_stamp
from backend.loading.stamps import FileStamp, file_stamp
from backend.loading.vae import load_taesd, load_vae
from backend.model_errors import ModelError, ModelNotFoundError
from backend.model_families import SD15, ModelFamily
from backend.model_files import TAESD_SUFFIXES, ModelStore

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, AutoencoderTiny, ControlNetModel, ControlNetUnionModel

log = logging.getLogger(__name__)

# Each SD1.5 ControlNet holds about 700 MB at fp16 on the GPU: keep the few a painter switches between.
MAX_CONTROLNETS = 4

# Loading builds modules under accelerate's init_empty_weights, which patches torch's parameter creation for
# the whole process while it runs: a module built meanwhile on another thread would get meta parameters. So
# every cache in the process (two servers in one process, as the tests run them) loads under one lock.
_LOADING = threading.RLock()


@dataclass(eq=False)
class _LoadedCheckpoint:
    name: str
    components: PipelineComponents  # with the VAE currently chosen
    base_vae: AutoencoderKL  # the checkpoint's own, kept so dropping an override needs no reload
    targets: LoraTargets
    unet_fuser: LoraFuser
    text_fuser: LoraFuser
    text_fuser_2: LoraFuser | None  # SDXL's second text encoder; None for one-encoder families
    stamp: FileStamp | None = None  # the checkpoint file's version when it was read
    vae_name: str | None = None
    vae_stamp: FileStamp | None = None
    loras: tuple[LoraSpec, ...] = ()
    lcm_lora: LoraSpec | None = None
    lora_stamps: dict[str, FileStamp | None] = field(default_factory=dict)  # of the fused LoRAs
    # LoRAs read for this checkpoint, most recently used last; their layer tables depend on its modules
    lora_cache: OrderedDict[str, tuple[FileStamp | None, LoraWeights]] = field(default_factory=OrderedDict)


class ModelCache:
    """Loads models from a ModelStore onto one device/dtype and caches them. Thread-safe."""

    lora_cache_size = 8  # unused LoRAs kept parsed, so toggling one off and on doesn't re-read it

    def __init__(
        self, store: ModelStore, device: torch.device, dtype: torch.dtype, config_dir: Path | None = None
    ) -> None:
        self.store = store
        self.device = torch.device(device)
        self.dtype = dtype
        self.config_dir = config_dir
        # Files read from disk, per kind: lets tests (and logs) prove a strength change reloaded nothing.
        self.load_counts: Counter[str] = Counter()
        self._lock = _LOADING
        self._state: _LoadedCheckpoint | None = None
        self._controlnets: dict[str, tuple[FileStamp | None, ControlNetModel | ControlNetUnionModel]] = {}
        # per family's preview decoder files (model_families.ModelFamily.preview_decoder): stamps, model
        self._taesd: dict[str, tuple[tuple[FileStamp | None, FileStamp | None], AutoencoderTiny]] = {}
        self._last_loaded: dict[str, Any] = {"checkpoint": None, "device": str(self.device)}
        self._embeddings = EmbeddingFiles()

    def components(
        self,
        checkpoint: str,
        loras: Sequence[LoraSpec] = (),
        vae: str | None = None,
        lcm_lora: LoraSpec | None = None,
    ) -> PipelineComponents:
        """The checkpoint with these LoRAs fused and this VAE; identical calls return the same object."""
        loras = tuple(loras)
        choices = (*loras, *((lcm_lora,) if lcm_lora is not None else ()))
        for choice in choices:
            if not (math.isfinite(choice.model_strength) and math.isfinite(choice.clip_strength)):
                raise ModelError(f"LoRA {choice.name!r}: strengths must be finite numbers.")
        with self._lock:
            # Resolve every name first, so a typo can't unload the model that is working now.
            checkpoint_path = self.store.resolve("checkpoints", checkpoint)
            lora_paths = {c.name: self.store.resolve("loras", c.name) for c in choices}
            vae_path = self.store.resolve("vae", vae) if vae is not None else None

            stamp = checkpoint_stamp(checkpoint_path)  # with its settings file's, if any
            lora_stamps = {name: file_stamp(path) for name, path in lora_paths.items()}
            vae_stamp = file_stamp(vae_path) if vae_path is not None else None

            state = self._state
            if state is None or state.name != checkpoint or state.stamp != stamp:
                state = self._switch_checkpoint(checkpoint, checkpoint_path, stamp)
            if (vae, vae_stamp) != (state.vae_name, state.vae_stamp):
                self._set_vae(state, vae, vae_path, vae_stamp)
            if (loras, lcm_lora, lora_stamps) != (state.loras, state.lcm_lora, state.lora_stamps):
                self._set_loras(state, loras, lcm_lora, lora_paths, lora_stamps)
            return state.components

    def controlnet(self, name: str) -> ControlNetModel | ControlNetUnionModel:
        """The ControlNet, cached; the least recently used ones leave once MAX_CONTROLNETS are loaded."""
        with self._lock:
            path = self.store.resolve("controlnet", name)
            stamp = file_stamp(path)
            cached = self._controlnets.pop(name, None)
            if cached is not None and cached[0] == stamp:
                model = cached[1]
            else:
                self.load_counts["controlnet"] += 1
                model = load_controlnet(path, self.device, self.dtype, self.config_dir)
                while len(self._controlnets) >= MAX_CONTROLNETS:
                    self._controlnets.pop(next(iter(self._controlnets)))
            self._controlnets[name] = (stamp, model)  # (re)inserted last: dict order is the recency order
            return model

    def embedding(self, name: str) -> TextualInversion:
        """A textual-inversion embedding from the embeddings folders (backend/loading/embeddings.py), read
        once per file version; kept on the CPU (the text encoders take its few vectors per encode)."""
        return self._embeddings.load(self.store.resolve("embeddings", name), name)

    def taesd(self, family: ModelFamily = SD15) -> AutoencoderTiny | None:
        """The family's TAESD from <stem>_encoder/<stem>_decoder files in the taesd folder (taesd_* for SD1.5,
        taesdxl_* for SDXL); None until both are there."""
        stem = family.preview_decoder
        with self._lock:
            encoder, decoder = self._find_taesd(stem + "_encoder"), self._find_taesd(stem + "_decoder")
            loaded = self._taesd.get(stem)
            if encoder is None or decoder is None:
                return loaded[1] if loaded else None  # files taken away: the loaded one still works
            stamps = (file_stamp(encoder), file_stamp(decoder))
            if loaded is None or stamps != loaded[0]:
                self.load_counts["taesd"] += 1
                self._taesd[stem] = (
                    stamps,
                    load_taesd(encoder, decoder, self.device, self.dtype, self.config_dir),
                )
            return self._taesd[stem][1]

    def loaded(self) -> dict[str, Any]:
        """What is loaded. Never waits: the server asks on its event loop (handshakes, model lists), and the
        lock is held for as long as a checkpoint takes to load; meanwhile the last known state is answered."""
        if not self._lock.acquire(blocking=False):
            return dict(self._last_loaded)
        try:
            state = self._state
            self._last_loaded = {
                "checkpoint": state.name if state else None,
                "is_inpaint": state.components.is_inpaint if state else False,
                "vae": state.vae_name if state else None,
                "loras": [asdict(c) for c in state.loras] if state else [],
                "lcm_lora": asdict(state.lcm_lora) if state and state.lcm_lora else None,
                "controlnets": sorted(self._controlnets),
                "taesd": bool(self._taesd),
                "device": str(self.device),
                "dtype": str(self.dtype).removeprefix("torch."),
            }
            return dict(self._last_loaded)
        finally:
            self._lock.release()

    def _switch_checkpoint(self, name: str, path: Path, stamp: FileStamp | None) -> _LoadedCheckpoint:
        """Read and check the new checkpoint while the working one stays loaded; only then swap them.

        A damaged, foreign or half-copied file fails in read_checkpoint and leaves the painter's model in
        place (it is not thrown away and read again after each bad request). The price: on a CPU device both
        are in memory for the moment of the swap; on a GPU the new one waits in host memory, as before.
        """
        self.load_counts["checkpoint"] += 1
        log.info("loading checkpoint %s", name)
        built = read_checkpoint(path, self.dtype, self.config_dir, name=name)
        self._unload_checkpoint()  # the old weights leave the device before the new ones claim it
        components = place_checkpoint(built, self.device, self.dtype)
        del built
        self._state = _LoadedCheckpoint(
            name=name,
            components=components,
            base_vae=components.vae,
            targets=LoraTargets.for_components(components, self.config_dir),
            unet_fuser=LoraFuser(components.unet, UNET),
            text_fuser=LoraFuser(components.text_encoder, TEXT_ENCODER),
            text_fuser_2=(
                None
                if components.text_encoder_2 is None
                else LoraFuser(components.text_encoder_2, TEXT_ENCODER_2)
            ),
            stamp=stamp,
        )
        return self._state

    def _unload_checkpoint(self) -> None:
        if self._state is None:
            return
        self._state = None
        gc.collect()  # the old weights must be gone before the next checkpoint claims the memory
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _set_vae(
        self, state: _LoadedCheckpoint, name: str | None, path: Path | None, stamp: FileStamp | None
    ) -> None:
        if path is None:
            vae = state.base_vae
        else:
            self.load_counts["vae"] += 1
            vae = load_vae(path, self.device, self.dtype, self.config_dir, state.components.family)
        state.components = replace(state.components, vae=vae)
        state.vae_name, state.vae_stamp = name, stamp

    def _set_loras(
        self,
        state: _LoadedCheckpoint,
        loras: tuple[LoraSpec, ...],
        lcm_lora: LoraSpec | None,
        paths: dict[str, Path],
        stamps: dict[str, FileStamp | None],
    ) -> None:
        choices = (*loras, *((lcm_lora,) if lcm_lora is not None else ()))
        # Read every file before touching weights: a bad file leaves the current fusion intact.
        weights = [(self._lora(state, c.name, paths[c.name], stamps[c.name]), c) for c in choices]
        state.unet_fuser.apply([(w, c.model_strength) for w, c in weights])
        state.text_fuser.apply([(w, c.clip_strength) for w, c in weights])
        if state.text_fuser_2 is not None:  # both text encoders take the clip strength
            state.text_fuser_2.apply([(w, c.clip_strength) for w, c in weights])
        state.loras, state.lcm_lora, state.lora_stamps = loras, lcm_lora, stamps
        keep = max(self.lora_cache_size, len(choices))
        while len(state.lora_cache) > keep:
            state.lora_cache.popitem(last=False)

    def _lora(self, state: _LoadedCheckpoint, name: str, path: Path, stamp: FileStamp | None) -> LoraWeights:
        cached = state.lora_cache.get(name)
        if cached is None or cached[0] != stamp:
            self.load_counts["lora"] += 1
            cached = (stamp, read_lora(path, name, state.targets, self.device))
        state.lora_cache[name] = cached
        state.lora_cache.move_to_end(name)
        return cached[1]

    def _find_taesd(self, stem: str) -> Path | None:
        for suffix in TAESD_SUFFIXES:
            try:
                return self.store.resolve("taesd", stem + suffix)
            except ModelNotFoundError:
                continue
        return None
