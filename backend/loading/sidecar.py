"""A checkpoint's own sampling settings in a YAML file beside it, for files that don't carry their markers.

Painters set a v-prediction checkpoint up the way A1111 taught them: `<checkpoint name>.yaml` next to the file
(`NoobAI-vpred.safetensors` + `NoobAI-vpred.yaml`; for a diffusers folder, `<folder>.yaml` beside it). Its
`parameterization` (A1111's LDM configs say it under `model.params`; found at any depth) is `v` for
v-prediction or `eps` for noise prediction, and `zero_terminal_snr` (also read as `zsnr`, ComfyUI's word,
or `rescale_betas_zero_snr`, diffusers') true for a schedule rescaled to zero terminal SNR. What the sidecar
says overrides the file's marker tensors (loading/components.py): it is the painter's word about this model.
It is read when the checkpoint loads, and a change to it reloads the checkpoint as a change to the file does
(`checkpoint_stamp`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from backend.loading.stamps import FileStamp, file_stamp
from backend.model_errors import ModelError

SUFFIXES = (".yaml", ".yml")
MAX_SIDECAR_BYTES = 1 << 20  # an LDM config is a few KiB
PARAMETERIZATIONS = {
    "v": "v_prediction", "v_prediction": "v_prediction", "eps": "epsilon", "epsilon": "epsilon"
}  # fmt: skip
ZERO_SNR_KEYS = ("zero_terminal_snr", "zsnr", "rescale_betas_zero_snr")


def sidecar_path(checkpoint: Path) -> Path | None:
    """The settings file beside a checkpoint file or folder, if there is one."""
    stem = checkpoint.name if checkpoint.is_dir() else checkpoint.stem
    for suffix in SUFFIXES:
        candidate = checkpoint.with_name(stem + suffix)
        if candidate.is_file():
            return candidate
    return None


def checkpoint_stamp(checkpoint: Path) -> FileStamp | None:
    """The checkpoint's file stamp (loading/stamps.py) with its sidecar's: editing either is a new version."""
    stamp = file_stamp(checkpoint)
    path = sidecar_path(checkpoint)
    if stamp is None or path is None:
        return stamp
    settings = file_stamp(path)
    if settings is None:
        return stamp
    named = tuple(("sidecar:" + path.name, *entry[1:]) for entry in settings.entries)
    return FileStamp(stamp.entries + named)


def sampling_overrides(checkpoint: Path) -> dict[str, Any]:
    """Scheduler config entries the checkpoint's sidecar sets ({} without one); ModelError when it is
    unreadable or says something the backend can't honour, naming the file."""
    path = sidecar_path(checkpoint)
    if path is None:
        return {}
    import yaml

    if path.stat().st_size > MAX_SIDECAR_BYTES:
        raise ModelError(f"{path.name} is over {MAX_SIDECAR_BYTES >> 10} KiB: not a checkpoint's settings.")
    try:
        settings = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise ModelError(f"{path.name} (settings of {checkpoint.name}) can't be read: {error}") from None
    overrides: dict[str, Any] = {}
    parameterization = _find(settings, ("parameterization",))
    if parameterization is not None:
        prediction = PARAMETERIZATIONS.get(str(parameterization).strip().lower())
        if prediction is None:
            raise ModelError(
                f"{path.name} sets parameterization {parameterization!r}; the backend runs 'v' "
                "(v-prediction) or 'eps' (noise prediction)."
            )
        overrides["prediction_type"] = prediction
    zero_snr = _find(settings, ZERO_SNR_KEYS)
    if zero_snr is not None:
        if not isinstance(zero_snr, bool):
            raise ModelError(f"{path.name}: zero_terminal_snr must be true or false, not {zero_snr!r}.")
        overrides["rescale_betas_zero_snr"] = zero_snr
    return overrides


def _find(settings: Any, keys: tuple[str, ...], depth: int = 0) -> Any:
    """The first value under one of `keys` in nested mappings (breadth first), or None."""
    if not isinstance(settings, dict) or depth > 8:
        return None
    for key in keys:
        if key in settings:
            return settings[key]
    for value in settings.values():
        found = _find(value, keys, depth + 1)
        if found is not None:
            return found
    return None
