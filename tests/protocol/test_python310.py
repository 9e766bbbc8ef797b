"""protocol/ and the plugin logic run in Krita's own Python, which may be 3.10: check with a real 3.10."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = """
from protocol import *
job = JobRequest("a", images=[ImageSpec("canvas", "bgra8", 3, 2)], bounds=Bounds(1, 2, 3, 2),
                 params=JobParams(controls=[ControlParam("pose", pose=[[(1.0, 2.0)] + [None] * 17])]))
assert decode_message(encode_message(job), CLIENT_MESSAGES) == job
frame = ImageFrame("a", "canvas", ImageEncoding.BGRA8, 3, 2, bytes(24))
assert decode_frame(encode_frame(frame), 8, 8) == frame
import krita_plugin.backoff, krita_plugin.job_tracking, krita_plugin.placement, krita_plugin.pose
import krita_plugin.request_builder, krita_plugin.settings, krita_plugin.history, krita_plugin.live_state
import krita_plugin.job_records, krita_plugin.document_state, krita_plugin.references, krita_plugin.regions
import sys
print("ok", sys.version_info[:2])
"""


def find_python310() -> str | None:
    for candidate in ("python3.10", str(Path.home() / ".pyenv/versions/3.10.13/bin/python3.10")):
        found = shutil.which(candidate)
        if found:
            return found
    return None


@pytest.mark.skipif(find_python310() is None, reason="no Python 3.10 on this machine")
def test_protocol_and_plugin_logic_run_on_python_310() -> None:
    env = {**os.environ, "PYENV_VERSION": "3.10.13", "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [find_python310() or "", "-B", "-c", SCRIPT],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert "ok (3, 10)" in done.stdout
