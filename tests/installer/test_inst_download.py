"""Downloads against a real HTTP server on loopback: full, resumed, corrupt, missing, flaky, no space."""

from __future__ import annotations

import io
from collections import namedtuple
from pathlib import Path

import pytest
from installer_testkit import LoopbackServer, fixture_bytes, sha256

from installer.download import (
    ChecksumError,
    DiskSpaceError,
    Downloader,
    DownloadError,
    NotFoundError,
    apply_mirror,
    part_path,
)
from installer.progress import Progress

DATA = fixture_bytes("model", 400_000)
PATH = "/org/repo/resolve/main/model.safetensors"
Usage = namedtuple("Usage", "total used free")


def make_downloader(sleeps: list[float] | None = None, **kwargs: object) -> Downloader:
    record = sleeps if sleeps is not None else []
    options = {"retries": 3, "backoff": 0.5, "timeout": 5.0, "stream": io.StringIO(), "sleep": record.append}
    options.update(kwargs)
    return Downloader(**options)  # type: ignore[arg-type]


def loadable_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith((".safetensors", ".pth", ".ckpt"))]


def test_full_download(server: LoopbackServer, tmp_path: Path) -> None:
    url = server.add(PATH, DATA)
    dest = tmp_path / "checkpoints" / "model.safetensors"
    result = make_downloader().fetch(url, dest, sha256=sha256(DATA), size=len(DATA), label="model")
    assert dest.read_bytes() == DATA
    assert result.verified and result.sha256 == sha256(DATA) and result.resumed_from == 0
    assert not part_path(dest).exists()
    assert server.requests() == [(PATH, None)]


def test_interrupted_download_resumes_with_range(server: LoopbackServer, tmp_path: Path) -> None:
    url = server.add(PATH, DATA)
    server.served.cut_once.add(PATH)
    dest = tmp_path / "model.safetensors"
    sleeps: list[float] = []
    result = make_downloader(sleeps).fetch(url, dest, sha256=sha256(DATA), size=len(DATA), label="model")
    first, second = server.requests()
    assert first == (PATH, None)
    assert second == (PATH, f"bytes={len(DATA) // 2}-")  # resumed where the cut left off
    assert sha256(dest.read_bytes()) == sha256(DATA) and result.verified
    assert sleeps == [0.5]


def test_partial_file_from_an_earlier_run_is_resumed(server: LoopbackServer, tmp_path: Path) -> None:
    url = server.add(PATH, DATA)
    dest = tmp_path / "model.safetensors"
    part_path(dest).write_bytes(DATA[:123_456])
    result = make_downloader().fetch(url, dest, sha256=sha256(DATA), size=len(DATA), label="model")
    assert server.requests() == [(PATH, "bytes=123456-")]
    assert result.resumed_from == 123_456 and dest.read_bytes() == DATA


def test_complete_partial_file_with_unknown_size_is_finished_by_416(
    server: LoopbackServer, tmp_path: Path
) -> None:
    url = server.add(PATH, DATA)
    dest = tmp_path / "model.safetensors"
    part_path(dest).write_bytes(DATA)
    make_downloader().fetch(url, dest, sha256=sha256(DATA), size=None, label="model")
    assert dest.read_bytes() == DATA and not part_path(dest).exists()


def test_server_ignoring_range_restarts_cleanly(server: LoopbackServer, tmp_path: Path) -> None:
    url = server.add(PATH, DATA)
    server.served.ignore_range.add(PATH)
    dest = tmp_path / "model.safetensors"
    part_path(dest).write_bytes(DATA[:1000])
    make_downloader().fetch(url, dest, sha256=sha256(DATA), size=len(DATA), label="model")
    assert dest.read_bytes() == DATA  # not the first 1000 bytes twice


def test_checksum_mismatch_is_rejected_and_leaves_nothing_loadable(
    server: LoopbackServer, tmp_path: Path
) -> None:
    corrupt = bytearray(DATA)
    corrupt[1000] ^= 0xFF
    url = server.add(PATH, bytes(corrupt))
    dest = tmp_path / "checkpoints" / "model.safetensors"
    with pytest.raises(ChecksumError, match="sha256 mismatch"):
        make_downloader().fetch(url, dest, sha256=sha256(DATA), size=len(DATA), label="model")
    assert not dest.exists() and not part_path(dest).exists()
    assert loadable_files(tmp_path) == []


def test_size_mismatch_is_rejected(server: LoopbackServer, tmp_path: Path) -> None:
    url = server.add(PATH, DATA[:-10])
    dest = tmp_path / "model.safetensors"
    with pytest.raises(ChecksumError, match="size mismatch"):
        make_downloader().fetch(url, dest, sha256=None, size=len(DATA), label="model")
    assert list(tmp_path.iterdir()) == []


def test_404_gives_a_clear_message_without_retrying(server: LoopbackServer, tmp_path: Path) -> None:
    dest = tmp_path / "model.safetensors"
    sleeps: list[float] = []
    with pytest.raises(NotFoundError) as caught:
        make_downloader(sleeps).fetch(
            server.url + "/gone.safetensors", dest, sha256=None, size=None, label="m"
        )
    assert "not found (HTTP 404)" in str(caught.value) and "/gone.safetensors" in str(caught.value)
    assert len(server.requests()) == 1 and sleeps == []
    assert list(tmp_path.iterdir()) == []


def test_server_errors_are_retried_with_exponential_backoff(server: LoopbackServer, tmp_path: Path) -> None:
    url = server.add(PATH, DATA)
    server.served.statuses[PATH] = [503, 500]
    dest = tmp_path / "model.safetensors"
    sleeps: list[float] = []
    make_downloader(sleeps).fetch(url, dest, sha256=sha256(DATA), size=len(DATA), label="model")
    assert sleeps == [0.5, 1.0] and dest.read_bytes() == DATA


def test_gives_up_after_the_retries(server: LoopbackServer, tmp_path: Path) -> None:
    url = server.add(PATH, DATA)
    server.served.statuses[PATH] = [503] * 10
    sleeps: list[float] = []
    with pytest.raises(DownloadError, match="giving up after 3 retries"):
        make_downloader(sleeps).fetch(url, tmp_path / "m.safetensors", sha256=None, size=None, label="m")
    assert sleeps == [0.5, 1.0, 2.0]


def test_forbidden_is_not_retried(server: LoopbackServer, tmp_path: Path) -> None:
    url = server.add(PATH, DATA)
    server.served.statuses[PATH] = [403]
    with pytest.raises(DownloadError, match="HTTP 403"):
        make_downloader().fetch(url, tmp_path / "m.safetensors", sha256=None, size=None, label="m")
    assert len(server.requests()) == 1


def test_refused_connection_is_a_network_error_after_retries(tmp_path: Path) -> None:
    sleeps: list[float] = []
    with pytest.raises(DownloadError, match="network error"):
        make_downloader(sleeps, retries=2).fetch(
            "http://127.0.0.1:9/m.safetensors", tmp_path / "m.safetensors", sha256=None, size=None, label="m"
        )
    assert sleeps == [0.5, 1.0]


def test_unknown_checksum_downloads_unverified(server: LoopbackServer, tmp_path: Path) -> None:
    url = server.add(PATH, DATA)
    result = make_downloader().fetch(url, tmp_path / "m.safetensors", sha256=None, size=None, label="m")
    assert not result.verified and result.sha256 == sha256(DATA)


def test_disk_space_is_checked_before_any_request(
    server: LoopbackServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = server.add(PATH, DATA)
    monkeypatch.setattr("shutil.disk_usage", lambda path: Usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(DiskSpaceError, match="not enough disk space"):
        make_downloader().fetch(url, tmp_path / "m.safetensors", sha256=None, size=len(DATA), label="m")
    assert server.requests() == []


def test_disk_space_is_checked_against_content_length_when_size_unknown(
    server: LoopbackServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = server.add(PATH, DATA)
    monkeypatch.setattr("shutil.disk_usage", lambda path: Usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(DiskSpaceError):
        make_downloader().fetch(url, tmp_path / "m.safetensors", sha256=None, size=None, label="m")
    assert not (tmp_path / "m.safetensors").exists()


def test_progress_is_plain_text_when_not_a_terminal(server: LoopbackServer, tmp_path: Path) -> None:
    url = server.add(PATH, DATA)
    out = io.StringIO()
    make_downloader(stream=out).fetch(url, tmp_path / "m.safetensors", sha256=None, size=len(DATA), label="m")
    text = out.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert 2 <= len(lines) <= 12  # one line per tenth, not one per chunk
    assert "100.0%" in lines[-1] and "400.0 KB / 400.0 KB" in lines[-1] and "/s" in lines[-1]


def test_progress_redraws_in_place_on_a_terminal() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Tty()
    now = [0.0]
    progress = Progress("m", 2_000_000, stream=out, clock=lambda: now[0])
    progress.start(0)
    now[0] = 0.5
    progress.advance(1_000_000)
    progress.finish()
    text = out.getvalue()
    assert text.count("\r") >= 2 and text.endswith("\n") and text.count("\n") == 1
    assert "50.0%" in text and "1.0 MB / 2.0 MB" in text and "2.0 MB/s" in text


def test_mirror_replaces_scheme_and_host_only() -> None:
    url = "https://models.example/org/repo/resolve/main/a.safetensors?download=true"
    assert apply_mirror(url, "http://127.0.0.1:8000/base/") == (
        "http://127.0.0.1:8000/base/org/repo/resolve/main/a.safetensors?download=true"
    )
    assert apply_mirror(url, None) == url


class _FakeResponse:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self._body = status, headers, io.BytesIO(body)

    def read(self, size: int = -1) -> bytes:
        return self._body.read(size)

    def __enter__(self) -> _FakeResponse:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def test_a_range_answer_for_another_offset_is_not_appended(tmp_path: Path) -> None:
    """A 206 must start where the partial file ends; bytes for another offset would corrupt it unnoticed."""
    dest = tmp_path / "model.safetensors"
    part_path(dest).write_bytes(DATA[:1000])
    asked: list[str | None] = []

    def opener(request: object, timeout: float | None = None) -> _FakeResponse:
        asked.append(request.get_header("Range"))  # type: ignore[attr-defined]
        if len(asked) == 1:  # a broken server: asked for bytes=1000-, answers from 0
            total = len(DATA)
            headers = {"Content-Range": f"bytes 0-{total - 1}/{total}", "Content-Length": str(total)}
            return _FakeResponse(206, headers, DATA)
        return _FakeResponse(200, {"Content-Length": str(len(DATA))}, DATA)

    sleeps: list[float] = []
    make_downloader(sleeps, opener=opener).fetch(url_for_fake(), dest, sha256=None, size=None, label="m")
    assert asked == ["bytes=1000-", None]  # the partial file was discarded and fetched whole
    assert dest.read_bytes() == DATA


def url_for_fake() -> str:
    return "http://127.0.0.1:9/model.safetensors"  # never contacted: the test's opener answers
