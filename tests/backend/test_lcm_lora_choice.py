"""The automatic LCM-LoRA is the checkpoint's family's, told from file headers (and names where headers don't
say), without loading anything: files that look like real SD1.5 and SDXL ones to a header reader."""

from __future__ import annotations

from pathlib import Path

from backend.engine.model_choice import choose_models, find_lcm_lora, lora_family
from backend.model_families import SD15, SDXL
from backend.model_files import ModelStore
from protocol.messages import JobParams
from tests.backend.fake_headers import kohya_lora, sd15_checkpoint, sdxl_checkpoint, write_safetensors


def models_folder(tmp_path: Path, loras: dict[str, bytes | dict]) -> ModelStore:
    root = tmp_path / "models"
    write_safetensors(root / "checkpoints" / "base-sd15.safetensors", sd15_checkpoint())
    write_safetensors(root / "checkpoints" / "base-xl.safetensors", sdxl_checkpoint())
    for name, content in loras.items():
        path = root / "loras" / name
        if isinstance(content, bytes):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        else:
            write_safetensors(path, content)
    return ModelStore(root)


def lcm_choice(store: ModelStore, checkpoint: str) -> str | None:
    choice = choose_models(store, JobParams(checkpoint=checkpoint, sampler="lcm"))
    return choice.lcm_lora.name if choice.lcm_lora is not None else None


def test_headers_decide_over_names_and_order(tmp_path: Path) -> None:
    # Listed first, and with names that say nothing (or the wrong thing): only the headers tell them apart.
    store = models_folder(
        tmp_path,
        {
            "a-lcm.safetensors": kohya_lora(2048),
            "b-lcm-sd15.safetensors": kohya_lora(2048, second_text_encoder=True),  # the name is wrong
            "c-lcm.safetensors": kohya_lora(768),
        },
    )
    assert lora_family(store, "b-lcm-sd15.safetensors") == (True, SDXL.name)
    assert lcm_choice(store, "base-xl.safetensors") == "a-lcm.safetensors"
    assert lcm_choice(store, "base-sd15.safetensors") == "c-lcm.safetensors"


def test_names_decide_where_headers_dont(tmp_path: Path) -> None:
    # Conv-only LoRAs: their headers name no family.
    store = models_folder(
        tmp_path,
        {"lcm-lora-sdxl.safetensors": kohya_lora(None), "lcm-lora-sdv1-5.safetensors": kohya_lora(None)},
    )
    assert lcm_choice(store, "base-xl.safetensors") == "lcm-lora-sdxl.safetensors"
    assert lcm_choice(store, "base-sd15.safetensors") == "lcm-lora-sdv1-5.safetensors"


def test_never_another_familys_lcm_lora(tmp_path: Path) -> None:
    store = models_folder(tmp_path, {"lcm-lora-sdv1-5.safetensors": kohya_lora(768)})
    assert lcm_choice(store, "base-xl.safetensors") is None  # runs without, as with an LCM-merged checkpoint
    assert lcm_choice(store, "base-sd15.safetensors") == "lcm-lora-sdv1-5.safetensors"


def test_untold_lcm_loras_serve_sd15_only(tmp_path: Path) -> None:
    """A name and header that say no family: SD1.5 takes it, as before families were told apart."""
    store = models_folder(tmp_path, {"my-lcm.safetensors": kohya_lora(None)})
    assert find_lcm_lora(store, SD15.name) == "my-lcm.safetensors"
    assert find_lcm_lora(store, SDXL.name) is None


def test_unusable_lcm_loras_are_passed_over(tmp_path: Path) -> None:
    store = models_folder(
        tmp_path, {"a-lcm-sdxl.safetensors": b"\x01\x00", "b-lcm-sdxl.safetensors": kohya_lora(2048)}
    )
    assert lora_family(store, "a-lcm-sdxl.safetensors") == (False, None)  # cut short: its header is damaged
    assert lcm_choice(store, "base-xl.safetensors") == "b-lcm-sdxl.safetensors"


def test_a_named_lcm_lora_or_strength_zero_is_kept(tmp_path: Path) -> None:
    store = models_folder(tmp_path, {"lcm-lora-sdxl.safetensors": kohya_lora(2048)})
    named = choose_models(
        store, JobParams(checkpoint="base-sd15.safetensors", lcm_lora="lcm-lora-sdxl.safetensors")
    )
    assert (
        named.lcm_lora is not None and named.lcm_lora.name == "lcm-lora-sdxl.safetensors"
    )  # the loader judges
    off = choose_models(
        store, JobParams(checkpoint="base-xl.safetensors", sampler="lcm", lcm_lora_strength=0)
    )
    assert off.lcm_lora is None
