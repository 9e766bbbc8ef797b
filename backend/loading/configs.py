"""The diffusers configs the loaders need, shipped with the project so nothing is fetched from a hub."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CONFIGS_DIR = Path(__file__).resolve().parents[1] / "configs"
SD15_CONFIG_DIR = CONFIGS_DIR / "sd15"
SD15_INPAINT_CONFIG_DIR = CONFIGS_DIR / "sd15_inpaint"
CONTROLNET_CONFIG_DIR = CONFIGS_DIR / "controlnet_sd15"

UNET_CONFIG = "unet/config.json"
TEXT_ENCODER_CONFIG = "text_encoder/config.json"
SCHEDULER_CONFIG = "scheduler/scheduler_config.json"


def read_json(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def sd_config_dir(config_dir: Path | None, inpaint: bool) -> Path:
    """The folder with unet/, vae/, text_encoder/ and scheduler/ configs for a checkpoint.

    A caller-given folder (tests' tiny models) is used as is; its UNet's input channels are then set from the
    weights by the loader.
    """
    if config_dir is not None:
        return config_dir
    return SD15_INPAINT_CONFIG_DIR if inpaint else SD15_CONFIG_DIR


def controlnet_config_dir(config_dir: Path | None) -> Path:
    """A caller-given SD config folder may hold its ControlNet config in `controlnet/`."""
    if config_dir is not None and (config_dir / "controlnet" / "config.json").is_file():
        return config_dir / "controlnet"
    return CONTROLNET_CONFIG_DIR


def taesd_config(config_dir: Path | None) -> dict[str, Any] | None:
    """AutoencoderTiny's defaults are TAESD's; only a caller-given folder can override them."""
    if config_dir is not None and (config_dir / "taesd" / "config.json").is_file():
        return read_json(config_dir / "taesd" / "config.json")
    return None
