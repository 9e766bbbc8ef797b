from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.backend.server_harness import RunningServer, running_server
from tests.fixtures.tiny_models import TinyModels


@pytest.fixture(scope="module")
def server(tiny_models: TinyModels) -> Iterator[RunningServer]:
    """The real backend serving the tiny models on a loopback port, shared by one test module."""
    with running_server(tiny_models.root, model_config_dir=tiny_models.config_dir) as running:
        yield running
