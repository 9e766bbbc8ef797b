"""The backend's command line (backend/cli.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.tiny_models import TinyModels


@pytest.mark.slow
def test_size_limits_on_the_command_line_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    from backend.cli import build_parser

    for flag in ("--max-size", "--max-message-mb"):
        with pytest.raises(SystemExit):
            build_parser().parse_args([flag, "0"])
        assert "must be at least 1" in capsys.readouterr().err
    assert build_parser().parse_args(["--max-size", "2048"]).max_size == 2048


@pytest.mark.slow
def test_low_vram_keeps_the_models_in_host_memory_and_runs_jobs(tiny_models: TinyModels) -> None:
    """--low-vram: the model cache holds the models on the CPU and the engine brings them per phase."""
    import numpy as np

    from backend.cli import build_parser, config_from_args
    from backend.engine import EngineJob
    from backend.engine_worker import EngineWorker
    from protocol import JobParams

    args = build_parser().parse_args(
        ["--low-vram", "--models-dir", str(tiny_models.root), "--model-config", str(tiny_models.config_dir)]
    )
    config = config_from_args(args)
    assert config.low_vram
    worker = EngineWorker(config)
    worker._load()
    engine = worker._engine
    assert engine is not None and engine.settings.low_vram and engine.residency.enabled
    canvas = np.full((64, 64, 4), 200, dtype=np.uint8)
    params = JobParams(prompt="a hill", checkpoint=tiny_models.checkpoint, steps=2, strength=0.5)
    result = engine.run(EngineJob("img2img", params, canvas), lambda i, n: None, lambda: False)
    assert result.params["accelerated"] is False and result.image.shape == (64, 64, 4)
    assert worker._models is not None and worker._models.device.type == "cpu"


def test_a_token_file_gives_each_line_a_token(tmp_path: Path) -> None:
    from backend.cli import build_parser, config_from_args

    token_file = tmp_path / "tokens"
    token_file.write_text("# studio painters\nalice-7f3a\n\n  bob-91cc  \nalice-7f3a\n", encoding="utf-8")
    args = build_parser().parse_args(["--token-file", str(token_file), "--token", "admin-1"])
    assert config_from_args(args).tokens == ("admin-1", "alice-7f3a", "bob-91cc")
    token_file.write_text("two words\n", encoding="utf-8")
    with pytest.raises(SystemExit) as refused:
        config_from_args(build_parser().parse_args(["--token-file", str(token_file)]))
    assert "two words" not in str(refused.value)  # the file's text is never echoed
    token_file.write_text("# nothing\n", encoding="utf-8")
    with pytest.raises(SystemExit, match="holds no token"):
        config_from_args(build_parser().parse_args(["--token-file", str(token_file)]))
