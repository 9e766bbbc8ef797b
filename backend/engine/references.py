"""Reference images through IP-Adapter (protocol/references.py): encode, install, scale per step.

Each acting reference is one IP-Adapter in diffusers' sense: its file's weights become an extra key/value
projection in every cross-attention (IPAdapterAttnProcessor2_0, installed by the UNet loader's
`_load_ip_adapter_weights`) and its image projection one entry of the UNet's `encoder_hid_proj`. The image is
prepared by the encoder's CLIPImageProcessor and encoded as diffusers' pipelines do (`encode_image`): base
adapters read the projected embedding and get zeros as CFG's negative, plus / full-face ones read the
penultimate hidden states and get those of an all-zero image. The encodings are kept per image, encoder and
adapter version, so live frames with the same reference don't encode it again.

They ride in `Guidance.added["image_embeds"]` (the UNet's added_cond_kwargs), a list with one tensor per
reference whose first dimension is the guidance batch: [uncond, cond] with CFG, [cond] without (regions
repeat the cond row for their rows). Each reference's strength is its adapter's scale, zero outside its
start/end fraction of the steps (counted as ControlNets count them) and, for the kinds "style" and
"composition", outside the family's InstantStyle blocks (STYLE_BLOCKS). A zero scale skips the adapter's
attention, and jobs without references get the UNet's own attention processors back (`detach`): they stay
bit-identical to a UNet that never saw an adapter. The installed set is kept on the UNet, so switching back
and forth reuses it without rebuilding or reloading the checkpoint.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from backend.loading.clip_vision import ClipVision, load_clip_vision
from backend.loading.ip_adapter import IPAdapterFile, load_ip_adapter
from backend.loading.stamps import FileStamp, file_stamp
from backend.model_errors import ModelError
from backend.model_families import SD15, SDXL, ModelFamily, describe_mismatch
from protocol.references import ReferenceParam

from .context import GenerationContext
from .images import flatten_on_white
from .jobs import EngineInputError
from .loop import ControlUnit
from .model_choice import Components, ModelChoice
from .reference_models import ReferenceModels, choose_reference_models
from .residency import Residency

# InstantStyle's blocks (the attention blocks that carry an image's style, and its layout) per family, as
# module-name prefixes of the UNet's attention processors. SD1.5 has none: InstantStyle published its block
# choice for SDXL only, so its kinds "style" and "composition" are refused there rather than guessed.
STYLE_BLOCKS: dict[str, dict[str, tuple[str, ...]]] = {
    SDXL.name: {"style": ("up_blocks.0.attentions.1",), "composition": ("down_blocks.2.attentions.1",)},
}
ACCELERATED_OFF = "reference images run on the plain path"
ATTRIBUTE = "_reference_adapters"  # the installed adapters' state, kept on the UNet it belongs to
ADAPTERS_KEPT = 4
ENCODERS_KEPT = 2
EMBEDDINGS_KEPT = 32


@dataclass
class Installed:
    """A UNet's own attention processors and the adapter set built for it (kept while it is detached)."""

    original: dict[str, Any]
    key: tuple[Any, ...] | None = None
    processors: dict[str, Any] = field(default_factory=dict[str, Any])
    projection: Any = None
    active: bool = False


def install(unet: Any, adapters: Sequence[IPAdapterFile], key: tuple[Any, ...]) -> None:
    """The adapters (in reference order) into `unet`; a set already built for it is reused."""
    state: Installed | None = getattr(unet, ATTRIBUTE, None)
    if state is None:
        state = Installed(dict(unet.attn_processors))
        setattr(unet, ATTRIBUTE, state)
    if state.active and state.key == key:
        return
    detach(unet)
    if state.key != key:
        unet._load_ip_adapter_weights([adapter.state_dict for adapter in adapters], low_cpu_mem_usage=False)
        state.processors = {k: v for k, v in unet.attn_processors.items() if k in state.original}
        state.projection, state.key = unet.encoder_hid_proj, key
    else:
        device, dtype = unet.device, unet.dtype
        for module in (*state.processors.values(), state.projection):
            if isinstance(module, torch.nn.Module):
                torch.nn.Module.to(module, device=device, dtype=dtype)
        unet.set_attn_processor(dict(state.processors))
        unet.encoder_hid_proj = state.projection
        unet.config.encoder_hid_dim_type = "ip_image_proj"
    state.active = True


def detach(unet: Any) -> None:
    """The UNet's own attention processors back, no image projection: as if no adapter was ever there."""
    state: Installed | None = getattr(unet, ATTRIBUTE, None)
    if state is None or not state.active:
        return
    unet.encoder_hid_proj = None  # first: its attention layers would count as the UNet's
    unet.config.encoder_hid_dim_type = None
    unet.set_attn_processor(dict(state.original))
    state.active = False


@dataclass
class StepScales:
    """Sets every adapter's scale in every cross-attention before each step (loop.denoise's `before_step`)."""

    processors: dict[str, Any]  # name -> IPAdapterAttnProcessor
    references: Sequence[ReferenceParam]
    blocks: Sequence[tuple[str, ...] | None]  # per reference: the block prefixes it acts in (None: all)

    def __call__(self, index: int, total: int) -> None:
        scales = [
            ControlUnit(None, torch.empty(0), r.strength, r.start, r.end).scale_at(index, total)
            for r in self.references
        ]
        for name, processor in self.processors.items():
            processor.scale = [
                scale if prefixes is None or name.startswith(tuple(p + "." for p in prefixes)) else 0.0
                for scale, prefixes in zip(scales, self.blocks, strict=True)
            ]


def acts(reference: ReferenceParam, steps: int) -> bool:
    unit = ControlUnit(None, torch.empty(0), reference.strength, reference.start, reference.end)
    return reference.strength != 0 and any(unit.scale_at(i, steps) != 0 for i in range(steps))


def reference_rgb(images: dict[str, np.ndarray], slot: str) -> np.ndarray:
    image = images.get(slot)
    if image is None:
        raise EngineInputError(f"The reference image {slot!r} was not sent with the job.")
    if image.dtype != np.uint8 or min(image.shape[:2]) < 1:
        raise EngineInputError(f"Reference image {slot!r} must be an RGBA or gray uint8 image.")
    if image.ndim == 2 or image.shape[2] == 1:
        return np.repeat(image.reshape(*image.shape[:2], 1), 3, axis=2)
    return flatten_on_white(image) if image.shape[2] == 4 else np.ascontiguousarray(image[..., :3])


def block_prefixes(reference: ReferenceParam, family: ModelFamily, unet: Any) -> tuple[str, ...] | None:
    """The attention blocks a reference of its kind acts in; None: all of them."""
    if reference.kind == "reference":
        return None
    table = STYLE_BLOCKS.get(family.name)
    if table is None or reference.kind not in table:
        raise EngineInputError(
            f"Reference kind {reference.kind!r} is not available for {family.label} checkpoints: the blocks "
            f"that carry an image's {reference.kind} are only known for SDXL (InstantStyle). Use kind "
            "'reference', or an SDXL checkpoint."
        )
    prefixes = table[reference.kind]
    names = unet.attn_processors.keys()
    missing = [p for p in prefixes if not any(n.startswith(p + ".") for n in names)]
    if missing:
        raise ModelError(
            f"This UNet has no {', '.join(missing)} block for reference kind {reference.kind!r}."
        )
    return prefixes


class _Kept(OrderedDict[Any, Any]):
    """A small least-recently-used map."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def take(self, key: Any) -> Any:
        if key in self:
            self.move_to_end(key)
            return self[key]
        return None

    def keep(self, key: Any, value: Any) -> Any:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)
        return value


class References:
    """The engine's reference-image support: loaded adapters and encoders, and the encodings of images."""

    def __init__(self, models: Any, device: torch.device, dtype: torch.dtype, residency: Residency) -> None:
        self.models = models
        self.device = device
        self.dtype = dtype
        self.residency = residency
        self._adapters = _Kept(ADAPTERS_KEPT)  # name -> (stamp, IPAdapterFile)
        self._encoders = _Kept(ENCODERS_KEPT)  # name -> (stamp, ClipVision)
        self._embeddings = _Kept(EMBEDDINGS_KEPT)  # (image hash, encoder, adapter, variant) -> (cond, uncond)
        self._installed: Any = None  # the UNet the running job's adapters are in

    def apply(
        self,
        ctx: GenerationContext,
        references: Sequence[ReferenceParam],
        images: dict[str, np.ndarray],
        choice: ModelChoice,
        components: Components,
        effective: dict[str, Any],
    ) -> bool:
        """The job's references into `ctx` (guidance, UNet, per-step scales); False when none acts (the UNet
        stays as the checkpoint made it). The UNet gets its own attention back in release()."""
        steps = len(ctx.schedule)
        acting = [(i, r) for i, r in enumerate(references) if acts(r, steps)]
        if not acting:
            return False
        with ctx.timed("reference"):  # loading, encoding and installing: the result's timings say it
            self._apply(ctx, acting, references, images, choice, components, effective)
        return True

    def release(self) -> None:
        """The UNet the job's adapters went into, as the checkpoint made it: at the end of every job with
        references, so a compile between jobs never traces the adapters (Engine.run)."""
        if self._installed is not None:
            detach(self._installed)
            self._installed = None

    def _apply(
        self,
        ctx: GenerationContext,
        acting: Sequence[tuple[int, ReferenceParam]],
        references: Sequence[ReferenceParam],
        images: dict[str, np.ndarray],
        choice: ModelChoice,
        components: Components,
        effective: dict[str, Any],
    ) -> None:
        unet = components.unet
        family: ModelFamily = getattr(components, "family", SD15)
        chosen = choice.references
        if len(chosen) != len(references):
            chosen = choose_reference_models(self.models.store, references, choice.checkpoint)
        blocks = [block_prefixes(reference, family, unet) for _, reference in acting]  # refusals first
        adapters: list[IPAdapterFile] = []
        embeds: list[torch.Tensor] = []
        key: list[Any] = []
        used: list[ReferenceModels] = []
        hits = 0
        for index, reference in acting:
            names = chosen[index]
            if names is None:
                names = choose_reference_models(self.models.store, [reference], choice.checkpoint)[0]
                assert names is not None  # the reference acts: its strength is not 0
            adapter, stamp = self._adapter(names.adapter)
            _check_fit(adapter, unet, family)
            encoder, encoder_stamp = self._encoder(names)
            rgb = reference_rgb(images, reference.image)
            embedding_key = (_image_hash(rgb), names.encoder, encoder_stamp, adapter.info.hidden_states)
            known = self._embeddings.take(embedding_key)
            if known is None:
                known = self._embeddings.keep(
                    embedding_key, self._encode(encoder, rgb, adapter.info.hidden_states)
                )
            else:
                hits += 1
            cond, uncond = (t.to(ctx.device, ctx.dtype) for t in known)
            batch = [uncond[None], cond[None]] if ctx.guidance.batched else [cond[None]]
            embeds.append(torch.cat(batch))
            adapters.append(adapter)
            key.append((names.adapter, stamp))
            used.append(names)
        install(unet, adapters, tuple(key))
        self._installed = unet
        added = {**(ctx.guidance.added or {}), "image_embeds": embeds}
        ctx.guidance = replace(ctx.guidance, added=added)
        processors = {k: v for k, v in unet.attn_processors.items() if hasattr(v, "to_k_ip")}
        ctx.before_step = StepScales(processors, [r for _, r in acting], blocks)
        effective["ip_adapters"] = [names.adapter for names in used]
        effective["clip_vision"] = [names.encoder for names in used]
        effective["references_cached"] = hits

    def _adapter(self, name: str) -> tuple[IPAdapterFile, FileStamp | None]:
        path = self.models.store.resolve_usable("ipadapter", name)
        stamp = file_stamp(path)
        known = self._adapters.take(name)
        if known is not None and known[0] == stamp and stamp is not None:
            return known[1], stamp
        return self._adapters.keep(name, (stamp, load_ip_adapter(path, name)))[1], stamp

    def _encoder(self, names: ReferenceModels) -> tuple[ClipVision, FileStamp | None]:
        path = self.models.store.resolve_usable("clip_vision", names.encoder)
        stamp = file_stamp(path)
        known = self._encoders.take(names.encoder)
        if known is not None and known[0] == stamp and stamp is not None:
            return known[1], stamp
        home = torch.device("cpu") if self.residency.enabled else self.device
        loaded = load_clip_vision(path, names.encoder, home, self.dtype)
        return self._encoders.keep(names.encoder, (stamp, loaded))[1], stamp

    def _encode(
        self, encoder: ClipVision, rgb: np.ndarray, hidden: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(cond, uncond) as diffusers' encode_image makes them (batch 1)."""
        model = encoder.model
        pixels = encoder.processor(rgb, return_tensors="pt").pixel_values
        with self.residency.using(model):
            pixels = pixels.to(model.device, model.dtype)
            if hidden:
                cond = model(pixels, output_hidden_states=True).hidden_states[-2]
                uncond = model(torch.zeros_like(pixels), output_hidden_states=True).hidden_states[-2]
            else:
                cond = model(pixels).image_embeds
                uncond = torch.zeros_like(cond)
        return cond, uncond


def _image_hash(rgb: np.ndarray) -> str:
    digest = hashlib.blake2b(np.ascontiguousarray(rgb).tobytes(), digest_size=16)
    digest.update(repr(rgb.shape).encode())
    return digest.hexdigest()


def _cross_attention_layers(unet: Any) -> int:
    return sum(1 for name in unet.attn_processors if name.endswith("attn2.processor"))


def _check_fit(adapter: IPAdapterFile, unet: Any, family: ModelFamily) -> None:
    """An adapter made for another UNet (another family's) is refused naming both."""
    info = adapter.info
    width, layers = int(unet.config.cross_attention_dim), _cross_attention_layers(unet)
    if info.cross_width == width and info.layers == layers:
        return
    found = info.family  # None: a width no family has (test models): the widths say it instead
    if found is not None and found is not family:
        raise ModelError(
            f"{describe_mismatch(f'IP-Adapter {adapter.name!r}', found, family)} "
            f"Use an {family.label} IP-Adapter."
        )
    raise ModelError(
        f"IP-Adapter {adapter.name!r} doesn't fit this {family.label} checkpoint: it has weights for "
        f"{info.layers} cross-attention layers reading {info.cross_width}-wide text features, the UNet has "
        f"{layers} reading {width}-wide ones."
    )
