"""The diffusers configs the loaders need, shipped with the project so nothing is fetched from a hub."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from backend.model_families import SD15, ModelFamily

CONFIGS_DIR = Path(__file__).resolve().parents[1] / "configs"
SD15_CONFIG_DIR = CONFIGS_DIR / "sd15"
SD15_INPAINT_CONFIG_DIR = CONFIGS_DIR / "sd15_inpaint"
CONTROLNET_CONFIG_DIR = CONFIGS_DIR / "controlnet_sd15"
SDXL_CONFIG_DIR = CONFIGS_DIR / "sdxl"
SDXL_INPAINT_CONFIG_DIR = CONFIGS_DIR / "sdxl_inpaint"
CONTROLNET_SDXL_CONFIG_DIR = CONFIGS_DIR / "controlnet_sdxl"

UNET_CONFIG = "unet/config.json"
TEXT_ENCODER_CONFIG = "text_encoder/config.json"
TEXT_ENCODER_2_CONFIG = "text_encoder_2/config.json"
SCHEDULER_CONFIG = "scheduler/scheduler_config.json"


def read_json(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def family_config_dir(family: ModelFamily, config_dir: Path | None, inpaint: bool) -> Path:
    """The folder with unet/, vae/, text_encoder*/ and scheduler/ configs for a checkpoint of `family`.

    A caller-given folder (tests' tiny models) may hold one folder per family named like the shipped ones
    (`sdxl/`), so one folder serves models of every family; otherwise it is the configs of the family asked
    for, used as is. The loader then sets the UNet's input channels from the weights.
    """
    if config_dir is not None:
        own = config_dir / family.configs
        return own if (own / UNET_CONFIG).is_file() else config_dir
    return CONFIGS_DIR / (family.inpaint_configs if inpaint else family.configs)


def sd_config_dir(config_dir: Path | None, inpaint: bool) -> Path:
    """The SD1.5 configs: a caller-given folder is used as is (see family_config_dir)."""
    if config_dir is not None:
        return config_dir
    return family_config_dir(SD15, None, inpaint)


def controlnet_config_dir(config_dir: Path | None, family: ModelFamily = SD15) -> Path:
    """A caller-given config folder may hold its ControlNet config in `controlnet/` (per family, as above)."""
    if config_dir is not None:
        folder = family_config_dir(family, config_dir, inpaint=False) / "controlnet"
        if (folder / "config.json").is_file():
            return folder
    return CONFIGS_DIR / family.controlnet_configs


def taesd_config(config_dir: Path | None) -> dict[str, Any] | None:
    """AutoencoderTiny's defaults are TAESD's; only a caller-given folder can override them."""
    if config_dir is not None and (config_dir / "taesd" / "config.json").is_file():
        return read_json(config_dir / "taesd" / "config.json")
    return None
