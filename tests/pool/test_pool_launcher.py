"""backend/pool.py without models: which workers it plans, and how it tends them (restarts said out loud, stop
signals passed on, stragglers killed). The workers here are small Python scripts standing in for
`python -m backend`; tests/pool/test_deploy_guide.py starts real ones."""

from __future__ import annotations

import io
import logging
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from backend import pool
from backend.pool import Pool, WorkerSpec, plan_workers, split_argv

# A stand-in worker: says hello, then exits with code $1 after $2 seconds, or at SIGTERM with code 0 after a
# short "drain" (unless $3 is "stubborn": then it ignores SIGTERM).
STAND_IN = """
import signal, sys, time
code, after, mode = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
def drained(*_):
    print("draining", flush=True)
    time.sleep(0.2)
    sys.exit(0)
signal.signal(signal.SIGTERM, signal.SIG_IGN if mode == "stubborn" else drained)
print("hello from", sys.argv[4], flush=True)
time.sleep(after)
sys.exit(code)
"""


def test_one_worker_per_gpu_on_consecutive_ports() -> None:
    specs = plan_workers(3, "cuda", [], "127.0.0.1", 9101)
    assert [(s.device, s.port) for s in specs] == [("cuda:0", 9101), ("cuda:1", 9102), ("cuda:2", 9103)]
    assert specs[1].command(["--token", "x"])[2:] == [
        "backend", "--host", "127.0.0.1", "--port", "9102", "--device", "cuda:1", "--token", "x",
    ]  # fmt: skip
    assert [s.device for s in plan_workers(2, "cpu", [], "127.0.0.1", 9101)] == ["cpu", "cpu"]
    named = plan_workers(None, "cuda", ["cuda:1", "cuda:3"], "0.0.0.0", 9200)
    assert [(s.device, s.host, s.port) for s in named] == [
        ("cuda:1", "0.0.0.0", 9200),
        ("cuda:3", "0.0.0.0", 9201),
    ]


def test_without_gpus_it_says_what_to_give(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pool, "cuda_device_count", lambda: 0)
    with pytest.raises(ValueError, match="--gpus N"):
        plan_workers(None, "cuda", [], "127.0.0.1", 9101)


def test_the_workers_options_follow_the_double_dash() -> None:
    assert split_argv(["--gpus", "2", "--", "--models-dir", "m"]) == (["--gpus", "2"], ["--models-dir", "m"])
    assert split_argv(["--gpus", "2"]) == (["--gpus", "2"], [])


def test_options_the_pool_sets_per_worker_are_refused_after_the_double_dash(capsys) -> None:
    with pytest.raises(SystemExit):
        pool.main(["--gpus", "2", "--device", "cpu", "--", "--port=9000"])
    assert "the pool sets each worker's host, port and device" in capsys.readouterr().err


class StandIns:
    """Makes a Pool whose workers run STAND_IN with per-worker (code, seconds, mode)."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        script = tmp_path / "stand_in.py"
        script.write_text(STAND_IN)
        self.behaviour: dict[int, tuple[int, float, str]] = {}
        behaviour = self.behaviour

        def command(spec: WorkerSpec, _passthrough: object) -> list[str]:
            code, after, mode = behaviour[spec.port]
            return [sys.executable, str(script), str(code), str(after), mode, str(spec.port)]

        monkeypatch.setattr(WorkerSpec, "command", command)
        monkeypatch.setattr(pool, "RESTART_DELAYS_S", (0.1, 0.2))
        self.output = io.StringIO()

    def pool(self, ports: list[int], *, restart: bool) -> Pool:
        specs = [WorkerSpec("cpu", "127.0.0.1", port) for port in ports]
        return Pool(specs, [], restart=restart, output=self.output)


def run_in_thread(the_pool: Pool, stop_timeout: float = 5.0) -> tuple[threading.Thread, list[int]]:
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(the_pool.run(stop_timeout)), daemon=True)
    thread.start()
    return thread, codes


def wait_for(test, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not test():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_worker_that_dies_is_reported_and_restarted_and_sigterm_drains_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    stand_ins = StandIns(tmp_path, monkeypatch)
    stand_ins.behaviour.update({9101: (0, 60.0, "normal"), 9102: (3, 0.3, "normal")})
    the_pool = stand_ins.pool([9101, 9102], restart=True)
    caplog.set_level(logging.INFO, logger="backend.pool")
    thread, codes = run_in_thread(the_pool)
    wait_for(lambda: "restarting (restart after 2 failure(s)" in caplog.text)
    assert (
        "worker 9102 cpu exited with code 3 after" in caplog.text and "restarting it in 0.1 s" in caplog.text
    )
    assert "restarting it in 0.2 s" in caplog.text  # it keeps failing: the delay grows
    stand_ins.behaviour[9102] = (0, 60.0, "normal")  # the next restart stays up
    wait_for(lambda: stand_ins.output.getvalue().count("hello from 9102") >= 4)
    the_pool.request_stop(signal.SIGTERM)
    thread.join(10)
    assert codes == [0]
    output = stand_ins.output.getvalue()
    assert "[9101 cpu] draining" in output and "[9102 cpu] draining" in output  # SIGTERM was passed on
    assert not any(w.running for w in the_pool.workers)


def test_no_restart_leaves_a_dead_worker_down_and_stops_when_none_is_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    stand_ins = StandIns(tmp_path, monkeypatch)
    stand_ins.behaviour.update({9101: (1, 0.2, "normal"), 9102: (2, 0.6, "normal")})
    caplog.set_level(logging.INFO, logger="backend.pool")
    thread, codes = run_in_thread(stand_ins.pool([9101, 9102], restart=False))
    thread.join(10)
    assert codes == [1]
    assert (
        "worker 9101 cpu exited with code 1" in caplog.text
        and "not restarting it (--no-restart)" in caplog.text
    )
    assert "every worker has exited" in caplog.text
    assert stand_ins.output.getvalue().count("hello from 9101") == 1


def test_a_worker_that_ignores_sigterm_is_killed_at_the_stop_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    stand_ins = StandIns(tmp_path, monkeypatch)
    stand_ins.behaviour.update({9101: (0, 60.0, "stubborn")})
    the_pool = stand_ins.pool([9101], restart=True)
    caplog.set_level(logging.INFO, logger="backend.pool")
    thread, codes = run_in_thread(the_pool, stop_timeout=0.5)
    wait_for(lambda: "hello from 9101" in stand_ins.output.getvalue())
    started = time.monotonic()
    the_pool.request_stop(signal.SIGTERM)
    thread.join(10)
    assert time.monotonic() - started < 5
    assert codes == [1] and "did not stop within 0.5 s: killing it" in caplog.text
