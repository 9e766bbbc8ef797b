"""Control images made from the canvas (backend/engine/annotate.py): canny in numpy, depth and line art from
their estimator models in `models/annotators/`, and the layers they come back as, which the kinds' hint
makers turn into exactly what the ControlNet 1.1 annotators give."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from backend.engine import EngineInputError, EngineJob
from backend.engine.annotate import ANNOTATORS, Annotator, canny_edges
from backend.engine.controlnet import HINT_MAKERS
from backend.loading.annotators import AnnotatorModels, LineartGenerator
from backend.model_errors import ModelError, ModelNotFoundError
from backend.model_files import ModelStore
from protocol import JobParams, registry
from tests.fixtures.tiny_annotators import (
    DEPTH_FOLDER,
    build_tiny_lineart,
    write_tiny_depth,
    write_tiny_lineart,
)


def square(
    width: int = 64, height: int = 48, box: tuple[int, int, int, int] = (20, 16, 60, 40)
) -> np.ndarray:
    """An opaque RGBA canvas: a white box (x0, y0, x1, y1) on black."""
    canvas = np.zeros((height, width, 4), dtype=np.uint8)
    canvas[..., 3] = 255
    x0, y0, x1, y1 = box
    canvas[y0:y1, x0:x1, :3] = 255
    return canvas


def along(block: np.ndarray, axis: int) -> np.ndarray:
    """Which rows (axis 1) or columns (axis 0) of `block` hold an edge."""
    return np.asarray(block.any(axis=axis))


def annotate(models: Path, kind: str, canvas: np.ndarray) -> tuple[np.ndarray, dict]:
    store = ModelStore(models)
    annotator = Annotator(type("Source", (), {"store": store})(), torch.device("cpu"), torch.float32)
    result = annotator.run(EngineJob("control_image", JobParams(control_kind=kind), canvas))
    assert result.bounds == (0, 0, canvas.shape[1], canvas.shape[0])
    return result.image, result.params


def test_every_from_image_kind_has_an_annotator() -> None:
    assert set(ANNOTATORS) == set(registry.from_image_kinds())
    assert {"canny", "depth", "lineart", "tile"} <= set(ANNOTATORS)


def test_canny_finds_the_edges_of_a_box_and_nothing_else() -> None:
    edges = canny_edges(square()[..., :3])  # the box: columns 20..59, rows 16..39
    assert edges.dtype == np.uint8 and set(np.unique(edges)) == {0, 255}
    outline = np.zeros(edges.shape, dtype=bool)  # within a pixel of the box's border
    outline[15:41, 19:61] = True
    outline[17:39, 21:59] = False
    assert not edges[~outline].any()
    for side in (along(edges[:, 19:21], 1), along(edges[:, 59:61], 1)):
        assert side[17:39].all()  # the left and right sides are closed lines
    for side in (along(edges[15:17], 0), along(edges[39:41], 0)):
        assert side[21:59].all()  # and the top and bottom
    assert (edges[:, 19:21] > 0).sum(axis=1).max() == 1  # one pixel thin across
    assert not canny_edges(np.full((20, 20, 3), 128, dtype=np.uint8)).any()  # flat: no edges


def test_canny_thresholds_and_hysteresis() -> None:
    # Gradient magnitudes (|dx| + |dy| of a 3x3 Sobel) across a vertical step of height h are 4h: a step of
    # 30 gives 120 (between the thresholds 100 and 200), one of 60 gives 240 (above).
    weak_only = np.zeros((20, 40), dtype=np.uint8)
    weak_only[:, 20:] = 30
    assert not canny_edges(weak_only).any()  # weak edges alone are dropped
    joined = weak_only.copy()
    joined[:10, 20:] = 60  # the upper half's step is strong, and the weak lower half connects to it
    edges = canny_edges(joined)
    assert along(edges[:, 19:21], 1).all()  # the whole line, weak part included
    apart = weak_only.copy()
    apart[:4, 20:] = 60
    apart[4:6, 20:] = 0  # a gap: the weak part below it touches no strong pixel
    edges = canny_edges(apart)
    assert edges[:3, 19:21].any() and not edges[8:, :].any()


def test_canny_of_a_colour_image_takes_each_pixels_strongest_channel() -> None:
    image = np.zeros((16, 32, 3), dtype=np.uint8)
    image[:, 16:, 2] = 200  # only blue steps: its luminance step (23) would be below the low threshold
    assert along(canny_edges(image)[:, 15:17], 1)[1:-1].all()


def test_line_layers_give_the_annotators_white_on_black_back() -> None:
    canvas = square()
    edges = canny_edges(canvas[..., :3])
    layer, params = annotate(Path("/nonexistent/models"), "canny", canvas)
    assert params["mode"] == "control_image" and params["control_kind"] == "canny"
    assert params["annotator"] == "canny (100, 200)"
    assert np.array_equal(layer[..., 3], edges) and not layer[..., :3].any()  # black lines, empty elsewhere
    for kind in ("canny", "lineart", "softedge"):
        hint = HINT_MAKERS[kind](layer)
        assert np.array_equal(hint, np.repeat(edges[..., None], 3, axis=2))
    # A painter's own drawing either way round gives the same hint.
    assert np.array_equal(HINT_MAKERS["canny"](255 - np.repeat(edges[..., None], 3, axis=2)), hint)


def test_tile_is_the_image_itself_and_depth_and_normal_are_taken_as_drawn() -> None:
    canvas = square()
    canvas[0, 0, 3] = 0  # a transparent pixel: white paper, as generations see it
    layer, _ = annotate(Path("/nonexistent/models"), "tile", canvas)
    assert layer[0, 0].tolist() == [255, 255, 255, 255] and np.array_equal(layer[1:, 1:], canvas[1:, 1:])
    assert np.array_equal(HINT_MAKERS["tile"](layer), layer[..., :3])
    depth = np.zeros((4, 4, 4), dtype=np.uint8)
    depth[..., :3], depth[..., 3] = 200, 255
    depth[0, 0, 3] = 0  # unpainted: black, the far distance
    for kind in ("depth", "normal"):
        hint = HINT_MAKERS[kind](depth)
        assert hint[0, 0].tolist() == [0, 0, 0] and hint[1, 1].tolist() == [200, 200, 200]


def test_a_missing_estimator_names_what_to_put_where(tmp_path: Path) -> None:
    models = tmp_path / "models"
    with pytest.raises(ModelNotFoundError, match="Depth Anything") as depth:
        annotate(models, "depth", square())
    assert f"{models / 'annotators'}/" in depth.value.message and "model.safetensors" in depth.value.message
    with pytest.raises(ModelNotFoundError, match=r"sk_model\.pth") as lineart:
        annotate(models, "lineart", square())
    assert f"{models / 'annotators'}/" in lineart.value.message
    (models / "annotators" / "depth-model").mkdir(parents=True)
    (models / "annotators" / "depth-model" / "config.json").write_text('{"model_type": "depth_anything"}')
    with pytest.raises(ModelError, match=r"has no model\.safetensors"):
        annotate(models, "depth", square())


def test_unknown_kinds_are_refused() -> None:
    annotator = Annotator(None, torch.device("cpu"), torch.float32)
    for kind in (None, "normal", "nonsense"):
        with pytest.raises(EngineInputError, match="is made from the image"):
            annotator.run(EngineJob("control_image", JobParams(control_kind=kind), square()))


@pytest.mark.slow  # transformers' depth models import in seconds
def test_a_tiny_depth_anything_folder_makes_a_depth_layer(tmp_path: Path) -> None:
    models = tmp_path / "models"
    folder = write_tiny_depth(models / "annotators")
    canvas = square(50, 38)
    layer, params = annotate(models, "depth", canvas)
    assert params["annotator"] == f"annotators/{DEPTH_FOLDER}"
    assert layer.shape == (38, 50, 4) and (layer[..., 3] == 255).all()  # opaque: the map as drawn
    gray = layer[..., 0]
    assert np.array_equal(layer[..., 1], gray) and np.array_equal(layer[..., 2], gray)
    assert gray.min() == 0 and gray.max() == 255  # stretched over the whole range

    # The same numbers as transformers' model on the preprocessed input, scaled back and stretched.
    from transformers import AutoModelForDepthEstimation

    model = AutoModelForDepthEstimation.from_pretrained(str(folder), local_files_only=True).eval()
    pixels = torch.from_numpy(canvas[..., :3].copy()).permute(2, 0, 1)[None].float() / 255
    pixels = torch.nn.functional.interpolate(pixels, (42, 56), mode="bicubic", antialias=True).clamp(0, 1)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    with torch.inference_mode():
        predicted = model(
            pixel_values=(pixels - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
        ).predicted_depth
    depth = torch.nn.functional.interpolate(predicted[:, None], (38, 50), mode="bicubic")[0, 0]
    expected = ((depth - depth.min()) / (depth.max() - depth.min()) * 255).round().to(torch.uint8).numpy()
    assert np.abs(gray.astype(int) - expected.astype(int)).max() <= 1


def test_a_tiny_lineart_annotator_makes_a_line_layer(tmp_path: Path) -> None:
    models = tmp_path / "models"
    write_tiny_lineart(models / "annotators")
    canvas = square(40, 32, (10, 8, 30, 24))
    layer, params = annotate(models, "lineart", canvas)
    assert params["annotator"] == "annotators/sk_model.pth"
    assert layer.shape == (32, 40, 4) and not layer[..., :3].any()

    model = build_tiny_lineart()
    pixels = torch.from_numpy(canvas[..., :3].copy()).permute(2, 0, 1)[None].float() / 255
    pixels = torch.nn.functional.interpolate(pixels, (512, 640), mode="bicubic", antialias=True).clamp(0, 1)
    with torch.inference_mode():
        paper = torch.nn.functional.interpolate(model(pixels), (32, 40), mode="bilinear")[0, 0]
    expected = ((1 - paper.clamp(0, 1)) * 255).round().to(torch.uint8).numpy()
    assert np.abs(layer[..., 3].astype(int) - expected.astype(int)).max() <= 1  # white-on-black as alpha
    assert layer[..., 3].std() > 0


def test_a_lineart_file_of_another_layout_is_refused(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    annotators = tmp_path / "models" / "annotators"
    annotators.mkdir(parents=True)
    save_file({"conv.weight": torch.zeros(2, 3, 3, 3)}, str(annotators / "lineart_other.safetensors"))
    with pytest.raises(ModelError, match=r"is not ControlNet 1\.1's line-art annotator"):
        annotate(tmp_path / "models", "lineart", square())
    state = LineartGenerator(8, 2).state_dict()
    state["model4.1.weight"] = torch.zeros(2, 8, 7, 7)  # a two-channel head
    save_file(state, str(annotators / "lineart_other.safetensors"))
    with pytest.raises(ModelError, match="does not fit the line-art annotator's layout"):
        annotate(tmp_path / "models", "lineart", square())


def test_loaded_estimators_are_kept_until_their_files_change(tmp_path: Path) -> None:
    annotators = tmp_path / "models" / "annotators"
    write_tiny_lineart(annotators, seed=1)
    models = AnnotatorModels(ModelStore(tmp_path / "models"), torch.device("cpu"), torch.float32)
    first, _ = models.lineart()
    assert models.lineart()[0] is first
    write_tiny_lineart(annotators, seed=2)
    second, _ = models.lineart()
    assert second is not first
    assert not torch.equal(first.state_dict()["model0.1.weight"], second.state_dict()["model0.1.weight"])
