"""deploy/README.md's commands, as the guide shows them: the HAProxy configuration check, and the pool
launcher starting two CPU workers (on the tiny models, on free ports) that answer /healthz and drain on
SIGTERM."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.pool.harness import REPO, free_port_pair, haproxy_binary, healthz, wait_ready, worker_env

GUIDE = REPO / "deploy" / "README.md"


def guide_commands() -> list[str]:
    """Every command line in the guide's `sh` blocks."""
    blocks = re.findall(r"```sh\n(.*?)```", GUIDE.read_text(), flags=re.DOTALL)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def the_command(starting: str, containing: str = "") -> str:
    found = [c for c in guide_commands() if c.startswith(starting) and containing in c]
    assert len(found) == 1, f"the guide should show one `{starting}...{containing}` command, shows {found}"
    return found[0]


def test_the_shipped_haproxy_configuration_is_valid() -> None:
    binary = haproxy_binary()
    if binary is None:
        pytest.skip("HAProxy is not installed (Debian: apt-get install haproxy)")
    command = shlex.split(the_command("haproxy -c -f"))
    checked = subprocess.run([binary, *command[1:]], cwd=REPO, capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "Configuration file is valid" in checked.stdout + checked.stderr


@pytest.mark.slow
def test_the_guides_cpu_pool_starts_two_workers_that_drain_on_sigterm(tmp_path: Path, tiny_models) -> None:
    """The guide's command for trying a pool without a GPU, on free ports and the tiny models: both workers
    come up ready, and a SIGTERM to the pool stops both cleanly."""
    words = shlex.split(the_command(".venv/bin/python -m backend.pool", "--device cpu"))
    assert words[words.index("--gpus") + 1] == "2"
    base = free_port_pair()
    words[words.index("--base-port") + 1] = str(base)
    command = [sys.executable, *words[1:], "--models-dir", str(tiny_models.root),
               "--model-config", str(tiny_models.config_dir)]  # fmt: skip
    log_path = tmp_path / "pool.log"
    with open(log_path, "wb") as log:
        # A session of its own: whatever happens, the pool and its workers go together at the end.
        launcher = subprocess.Popen(
            command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=worker_env(), start_new_session=True
        )
    try:
        for port in (base, base + 1):
            wait_ready(port, 90.0, launcher)
            status, body = healthz(port)
            assert status == 200 and body["state"] == "ready", body
            assert body["device"] and body["models"]
        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(60) == 0
        assert healthz(base)[0] == 0 and healthz(base + 1)[0] == 0  # both gone
        text = log_path.read_text(errors="replace")
        assert f"[{base} cpu]" in text and f"[{base + 1} cpu]" in text  # each worker's lines, named
        assert "draining" in text
    except BaseException:
        print(log_path.read_text(errors="replace")[-6000:])
        raise
    finally:
        try:
            os.killpg(launcher.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        launcher.wait(10)
