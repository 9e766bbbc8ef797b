"""Low-VRAM mode: each phase brings only its own models to the device, and the images are the same."""

from __future__ import annotations

import torch

from backend.engine.residency import Residency
from tests.backend.test_engine_support import job, make_canvas, make_engine, run


def test_each_phase_brings_only_its_models_and_the_image_is_unchanged() -> None:
    engine, models = make_engine(low_vram=True)
    parts = models.parts
    names = {id(parts.text_encoder): "text", id(parts.vae): "vae", id(parts.unet): "unet"}
    moves: list[tuple[str, str]] = []

    def record(module: torch.nn.Module, device: torch.device) -> None:
        moves.append(
            (names.get(id(module), "other"), "device" if device == engine.residency.device else "home")
        )

    engine.residency.move = record
    engine.residency.home = torch.device("meta")  # only recorded: a real move there would drop the weights
    canvas = make_canvas(64, 48, seed=2)
    params = {
        "prompt": "a house",
        "negative_prompt": "fog",
        "cfg": 2.0,
        "steps": 4,
        "strength": 0.5,
        "seed": 3,
    }
    low = run(engine, job(canvas, **params))
    assert moves == [
        ("text", "device"),  # the prompt (the negative one reuses the encoder already there)
        ("text", "home"), ("vae", "device"),  # encode
        ("vae", "home"), ("unet", "device"),  # denoise
        ("unet", "home"), ("vae", "device"),  # decode
    ]  # fmt: skip
    assert low.params["accelerated"] is False
    resident, _ = make_engine()
    assert low.image.tobytes() == run(resident, job(canvas, **params)).image.tobytes()

    moves.clear()
    run(engine, job(canvas, **params))  # cached prompts: no encoder comes
    assert ("text", "device") not in moves


def test_disabled_residency_moves_nothing() -> None:
    moved: list[object] = []
    residency = Residency(
        torch.device("cpu"), enabled=False, move=lambda module, device: moved.append(module)
    )
    with residency.using(torch.nn.Linear(2, 2)):
        pass
    residency.release()
    assert moved == []
