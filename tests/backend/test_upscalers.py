"""Upscale models (backend/loading/upscalers.py): tiny Real-ESRGAN files in the real layouts load through
spandrel and compute what their architectures compute; the store finds them where ComfyUI and A1111 keep
them; unsafe or foreign files are refused with the reason; the model runs on tiles."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from backend.engine.upscale import enlarge_with_model
from backend.loading.upscalers import UpscalerCache, import_spandrel, load_upscaler
from backend.model_errors import ModelError, ModelNotFoundError
from backend.model_files import ModelStore
from tests.fixtures.tiny_upscalers import TinyCompact, seeded, write_compact_x4, write_realesrgan_x2

REPO = Path(__file__).resolve().parents[2]
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    root = tmp_path_factory.mktemp("models")
    write_realesrgan_x2(root / "upscale_models" / "RealESRGAN_x2plus.pth")
    write_compact_x4(root / "upscale_models" / "sub" / "realesr-general-x4v3.safetensors")
    return ModelStore(root)


def photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth shapes and some noise: an image an upscaler has something to do with."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    rgb = (
        np.stack([np.sin(7 * xx), np.cos(5 * yy), xx * yy], -1) * 100
        + 120
        + rng.normal(0, 8, (height, width, 3))
    )
    return rgb.clip(0, 255).astype(np.uint8)


def test_real_esrgan_pth_and_compact_safetensors_load_and_compute_their_architecture(
    store: ModelStore,
) -> None:
    for name, architecture, scale in (
        ("RealESRGAN_x2plus.pth", "ESRGAN", 2),
        ("sub/realesr-general-x4v3.safetensors", "RealESRGAN Compact", 4),
    ):
        # float16 asked for: the CPU runs float32
        upscaler = load_upscaler(store.resolve("upscale_models", name), name, CPU, torch.float16)
        assert (upscaler.architecture, upscaler.scale, upscaler.dtype) == (architecture, scale, torch.float32)
        image = photo(20, 28)
        out = upscaler(image)
        assert out.shape == (20 * scale, 28 * scale, 3) and out.dtype == np.uint8


def test_the_loaded_models_compute_what_the_architectures_compute(tmp_path: Path) -> None:
    """Our own plain-torch forward passes of RRDBNet and SRVGGNetCompact against spandrel's models, loaded
    from the files those modules wrote: the files are in the layouts spandrel reads as those architectures."""
    for path, module in (
        (tmp_path / "x2.pth", write_realesrgan_x2(tmp_path / "x2.pth", seed=21)),
        (tmp_path / "x4.safetensors", write_compact_x4(tmp_path / "x4.safetensors", seed=22)),
    ):
        upscaler = load_upscaler(path, path.name, CPU, torch.float32)
        image = torch.rand(1, 3, 24, 20, generator=torch.Generator().manual_seed(3))
        with torch.inference_mode():
            expected = module(image).clamp(0, 1)
            assert torch.equal(upscaler.descriptor(image), expected)


def test_the_store_lists_upscale_models_in_our_comfyui_and_a1111_layouts(tmp_path: Path) -> None:
    own = tmp_path / "own"
    write_compact_x4(own / "upscale_models" / "mine.safetensors")
    (own / "upscale_models" / "notes.txt").write_text("not a model")
    a1111 = tmp_path / "webui" / "models"
    (a1111 / "Stable-diffusion").mkdir(parents=True)
    write_realesrgan_x2(a1111 / "ESRGAN" / "4x-UltraSharp.pth")
    write_realesrgan_x2(a1111 / "RealESRGAN" / "RealESRGAN_x2plus.pth")
    comfy = tmp_path / "ComfyUI" / "models"
    (comfy / "checkpoints").mkdir(parents=True)
    (comfy / "clip_vision").mkdir()
    write_compact_x4(comfy / "upscale_models" / "2x_comfy.safetensors")
    store = ModelStore(own, extra_roots=[tmp_path / "webui", tmp_path / "ComfyUI"])
    assert [root.layout_name for root in store.roots] == ["own", "a1111", "comfyui"]
    names = store.list_models()["upscale_models"]
    assert names == ["2x_comfy.safetensors", "4x-UltraSharp.pth", "mine.safetensors", "RealESRGAN_x2plus.pth"]
    assert store.resolve("upscale_models", "4x-UltraSharp.pth") == a1111 / "ESRGAN" / "4x-UltraSharp.pth"
    with pytest.raises(ModelNotFoundError, match=r"No upscale model named 'absent.pth'\. Put upscale models"):
        store.resolve("upscale_models", "absent.pth")
    with pytest.raises(ModelError, match="unsupported file type"):
        store.resolve("upscale_models", "notes.txt")


class Payload:
    """Pickled beside the weights: weights_only loading must refuse it (it could be code)."""


def test_unsafe_damaged_and_foreign_files_are_refused_with_the_reason(tmp_path: Path) -> None:
    model = TinyCompact(scale=4)
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"params": model.state_dict(), "callback": Payload()}, unsafe)
    with pytest.raises(ModelError, match="holds Python objects besides weights"):
        load_upscaler(unsafe, unsafe.name, CPU, torch.float32)
    damaged = tmp_path / "damaged.pth"
    damaged.write_bytes(b"PK\x03\x04 half a download")
    with pytest.raises(ModelError, match="not a readable PyTorch file"):
        load_upscaler(damaged, damaged.name, CPU, torch.float32)
    foreign = tmp_path / "foreign.pth"
    torch.save({"encoder.weight": torch.zeros(4, 4)}, foreign)
    with pytest.raises(ModelError, match="of no architecture the upscaler library knows"):
        load_upscaler(foreign, foreign.name, CPU, torch.float32)
    restoration = tmp_path / "1x-denoise.pth"
    torch.save({"params": seeded(TinyCompact(scale=1), 5).state_dict()}, restoration)
    with pytest.raises(ModelError, match=r"is not an upscale model: .*keeps the size \(1x\)"):
        load_upscaler(restoration, restoration.name, CPU, torch.float32)


def test_the_cache_keeps_the_last_model_and_reads_a_changed_file_again(tmp_path: Path) -> None:
    path = tmp_path / "upscale_models" / "x.pth"
    write_realesrgan_x2(path, seed=1)
    store = ModelStore(tmp_path)
    cache = UpscalerCache(CPU, torch.float32)
    first = cache.get(store, "x.pth")
    assert cache.get(store, "x.pth") is first and cache.loads == 1
    write_compact_x4(path.with_suffix(".safetensors"))
    os.replace(path.with_suffix(".safetensors"), path.with_name("y.safetensors"))
    assert cache.get(store, "y.safetensors").scale == 4 and cache.loads == 2
    write_realesrgan_x2(path, seed=2)
    os.utime(path, ns=(1, 1))  # another version of the file, whatever the clock's resolution
    again = cache.get(store, "x.pth")
    assert again is not first and cache.loads == 3


@pytest.mark.parametrize(("name", "factor"), [("x4", 4), ("x2", 2), ("x2", 4), ("x4", 2)])
def test_the_model_runs_on_tiles_as_on_the_whole_image(tmp_path: Path, name: str, factor: int) -> None:
    """A 2x model runs twice for 4x; a 4x model for 2x is resampled down per tile (Lanczos reaching into the
    context around the tile). Tiles 32 px of source with 16 px of context match the whole-image run."""
    path = tmp_path / f"{name}.pth"
    if name == "x4":
        torch.save({"params": seeded(TinyCompact(scale=4), 8).state_dict()}, path)
    else:
        write_realesrgan_x2(path, seed=9)
    upscaler = load_upscaler(path, path.name, CPU, torch.float32)
    image = photo(70, 90, seed=4)
    size = (90 * factor, 70 * factor)
    passes = 2 if (name, factor) == ("x2", 4) else 1
    tiles: list[int] = []
    tiled = enlarge_with_model(image, size, upscaler, passes, lambda: False, lambda: tiles.append(1), tile=32)
    whole = image
    for _ in range(passes):
        whole = upscaler(whole)
    if whole.shape[:2] != (size[1], size[0]):
        whole = np.asarray(Image.fromarray(whole).resize(size, Image.Resampling.LANCZOS))
    assert tiled.shape == whole.shape == (size[1], size[0], 3)
    assert len(tiles) == 3 * 3
    difference = np.abs(tiled.astype(int) - whole.astype(int))
    assert difference.max() <= 1, difference.max()  # float sums of other-sized convolutions may round apart


def test_spandrel_loads_where_torchvision_cannot(tmp_path: Path) -> None:
    """PyPI's torchvision beside a CPU torch fails at import ("operator torchvision::nms does not exist");
    spandrel imports it for two non-upscaler architectures. The upscalers must load all the same."""
    fake = tmp_path / "fake" / "torchvision"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('raise RuntimeError("operator torchvision::nms does not exist")\n')
    write_realesrgan_x2(tmp_path / "x2.pth")
    script = textwrap.dedent(
        f"""
        import sys
        import torch
        from backend.loading.upscalers import import_spandrel, load_upscaler
        from pathlib import Path
        import_spandrel()
        assert "torchvision" not in sys.modules  # the stand-in is gone: others still find no torchvision
        path = Path({str(tmp_path / "x2.pth")!r})
        upscaler = load_upscaler(path, "x2.pth", torch.device("cpu"), torch.float32)
        print(upscaler.architecture, upscaler.scale)
        """
    )
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "fake"), str(REPO)])}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=environment, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["ESRGAN", "2"]


def test_spandrel_is_imported_once_and_leaves_no_stand_in_behind() -> None:
    assert import_spandrel() is import_spandrel()
    module = sys.modules.get("torchvision")
    assert module is None or getattr(module, "__file__", None) is not None  # a real torchvision, or none
