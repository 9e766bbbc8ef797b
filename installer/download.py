"""Resumable, verified downloads with urllib only (install.py runs before any dependency exists).

A file is written as `<name>.part` next to its destination and renamed only once it is complete and its
checksum (when known) matches, so the backend never sees a half-written or corrupt model: `.part` files
do not end in `.safetensors` or `.pth`.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from installer.progress import Progress, human_size

MIRROR_ENV = "KRITA_LIVE_DIFFUSION_MIRROR"
PART_SUFFIX = ".part"
CHUNK = 1 << 16
# Room left free beyond the file itself: a full disk breaks far more than this download.
DISK_MARGIN = 64 * 1000 * 1000
USER_AGENT = "krita-live-diffusion-installer/1"


class DownloadError(RuntimeError):
    """A download failed; the message says why in words a painter can act on."""


class RetryableError(DownloadError):
    """A failure that may pass: server errors, rate limits, a stale partial file."""


class UnreachableError(DownloadError):
    """The host's name does not resolve: this machine is offline or the host is gone; waiting won't help."""


class NotFoundError(DownloadError):
    pass


class ChecksumError(DownloadError):
    pass


class DiskSpaceError(DownloadError):
    pass


@dataclass(frozen=True)
class DownloadResult:
    path: Path
    size: int
    sha256: str
    verified: bool  # False when the manifest had no checksum to compare with
    resumed_from: int


def part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + PART_SUFFIX)


def apply_mirror(url: str, mirror: str | None) -> str:
    """Swap the scheme and host of `url` for `mirror` (which may carry a path prefix); keep the path."""
    if not mirror:
        return url
    parsed = urllib.parse.urlsplit(url)
    rest = parsed.path + (f"?{parsed.query}" if parsed.query else "")
    return mirror.rstrip("/") + rest


def mirror_from_env() -> str | None:
    return os.environ.get(MIRROR_ENV) or None


def check_disk_space(folder: Path, needed: int, disk_usage: Callable | None = None) -> None:
    """Raise DiskSpaceError unless the filesystem holding `folder` has `needed` bytes plus a margin free."""
    probe = folder
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    free = (disk_usage or shutil.disk_usage)(probe).free
    if needed + DISK_MARGIN > free:
        raise DiskSpaceError(
            f"not enough disk space in {folder}: need {human_size(needed)} "
            f"(+{human_size(DISK_MARGIN)} margin), {human_size(free)} free"
        )


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Downloader:
    """Fetches one URL to one destination; the knobs exist so tests can drive every failure path."""

    retries: int = 5
    backoff: float = 1.0  # seconds before the first retry; doubles each time
    timeout: float = 30.0
    stream: TextIO | None = None  # progress output; None -> stderr
    sleep: Callable[[float], None] = time.sleep
    disk_usage: Callable | None = None  # None: shutil.disk_usage, looked up at call time
    opener: Callable[..., http.client.HTTPResponse] = urllib.request.urlopen

    def fetch(
        self, url: str, dest: Path, *, sha256: str | None, size: int | None, label: str
    ) -> DownloadResult:
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = part_path(dest)
        resumed_from = part.stat().st_size if part.exists() else 0
        if size is not None:
            check_disk_space(dest.parent, max(0, size - resumed_from), self.disk_usage)
        progress = Progress(label, size, stream=self.stream or sys.stderr)
        attempt = 0
        while True:
            try:
                if self._transfer(url, part, size, progress):
                    break
                reason = "connection closed before the end of the file"
            except RetryableError as exc:
                reason = str(exc)
            except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError) as exc:
                reason = f"network error: {getattr(exc, 'reason', exc)}"
                if isinstance(getattr(exc, "reason", None), socket.gaierror):
                    host = urllib.parse.urlsplit(url).hostname
                    raise UnreachableError(
                        f"{url}: cannot resolve {host}; is this machine offline?"
                    ) from None
            attempt += 1
            if attempt > self.retries:
                raise DownloadError(
                    f"{url}: giving up after {self.retries} retries ({reason}); run again to resume"
                )
            delay = self.backoff * (2 ** (attempt - 1))
            (self.stream or sys.stderr).write(
                f"{label}: {reason}; retry {attempt}/{self.retries} in {delay:g} s\n"
            )
            self.sleep(delay)
        progress.finish()
        return self._verify_and_commit(part, dest, sha256=sha256, size=size, resumed_from=resumed_from)

    def _transfer(self, url: str, part: Path, size: int | None, progress: Progress) -> bool:
        """One HTTP request appending to `part`. True when the file is complete, False when cut short."""
        have = part.stat().st_size if part.exists() else 0
        if size is not None and have == size:
            return True  # a previous run got every byte; only the check and the rename are left
        request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
        if have:
            request.add_header("Range", f"bytes={have}-")
        try:
            response = self.opener(request, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            return self._http_error(exc, url, part, have, size)
        with response:
            status = response.status
            if status == 200 and have:
                have = 0  # the server ignored the range: start over rather than append a second copy
            if status == 206 and _content_range_start(response.headers.get("Content-Range", "")) != have:
                part.unlink(missing_ok=True)  # bytes for another offset would corrupt the file silently
                raise RetryableError(f"{url}: the server sent another range than asked for; starting over")
            expected_total = self._expected_total(response, status, have, size)
            if expected_total is not None:
                check_disk_space(part.parent, max(0, expected_total - have), self.disk_usage)
                progress.total = expected_total
            progress.start(have)
            with part.open("r+b" if have else "wb") as out:
                out.seek(have)
                out.truncate()
                while True:
                    chunk = response.read(CHUNK)
                    if not chunk:
                        break
                    out.write(chunk)
                    progress.advance(len(chunk))
        got = part.stat().st_size
        if expected_total is not None:
            return got >= expected_total
        return True  # no length announced: the end of the stream is the end of the file

    def _http_error(
        self, exc: urllib.error.HTTPError, url: str, part: Path, have: int, size: int | None
    ) -> bool:
        if exc.code == 404:
            raise NotFoundError(
                f"{url}: not found (HTTP 404); the file may have moved: check the manifest URL"
            )
        if exc.code == 416 and have:
            # The range starts at or past the end: either the .part is complete or it is stale.
            total = _content_range_total(exc.headers.get("Content-Range", "")) if exc.headers else None
            if total is not None and have == total:
                return True
            part.unlink(missing_ok=True)
            raise RetryableError(f"{url}: stale partial download discarded, starting over")
        message = f"{url}: HTTP {exc.code} {exc.reason}"
        # Server trouble and rate limits pass; other client errors (401, 403, ...) will not fix themselves.
        if exc.code >= 500 or exc.code in (408, 429):
            raise RetryableError(message)
        raise DownloadError(message)

    @staticmethod
    def _expected_total(
        response: http.client.HTTPResponse, status: int, have: int, size: int | None
    ) -> int | None:
        if status == 206:
            total = _content_range_total(response.headers.get("Content-Range", ""))
            if total is not None:
                return total
        length = response.headers.get("Content-Length")
        if length is not None and length.isdigit():
            return have + int(length) if status == 206 else int(length)
        return size

    def _verify_and_commit(
        self, part: Path, dest: Path, *, sha256: str | None, size: int | None, resumed_from: int
    ) -> DownloadResult:
        actual_size = part.stat().st_size
        if size is not None and actual_size != size:
            part.unlink(missing_ok=True)
            raise ChecksumError(
                f"{dest.name}: size mismatch (got {actual_size} bytes, expected {size}); removed"
            )
        digest = sha256_of(part)
        if sha256 is not None and digest != sha256:
            part.unlink(missing_ok=True)
            raise ChecksumError(
                f"{dest.name}: sha256 mismatch (got {digest}, expected {sha256}); the download was removed"
            )
        os.replace(part, dest)
        return DownloadResult(
            dest, actual_size, digest, verified=sha256 is not None, resumed_from=resumed_from
        )


def _content_range_start(header: str) -> int | None:
    """The first byte of `bytes a-b/total`; None when the header has no range."""
    unit, _, rest = header.strip().partition(" ")
    start = rest.partition("-")[0]
    return int(start) if unit == "bytes" and start.isdigit() else None


def _content_range_total(header: str) -> int | None:
    """The total from `bytes a-b/total` or `bytes */total`."""
    _, _, total = header.rpartition("/")
    return int(total) if total.strip().isdigit() else None
