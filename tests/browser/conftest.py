"""The studio served on a free localhost port (``python -m grn.studio``, a real process) and Debian's chromium
driven headless through Playwright. Nothing downloads a browser: ``make test-browser`` installs Debian's
chromium and the playwright Python package, and the tests skip with the reason where either is missing.

Screenshots go to the test's tmp dir, and also to ``$GRN_ARTIFACTS`` when it is set (CI keeps them).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("GRN_CHROMIUM", "/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``python -m grn.studio ckpt=... port=<free>`` in its own process, stopped by its pid at the end."""

    def __init__(self, ckpt: Path, workdir: Path, log: Path, *extra: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log = log
        env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": "2"}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "grn.studio",
                f"ckpt={ckpt}",
                f"port={self.port}",
                f"workdir={workdir}",
                *extra,
            ],
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=env,
        )

    def wait(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"the studio exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}"
                )
            try:
                with urllib.request.urlopen(self.url, timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(1)
        raise TimeoutError(
            f"the studio did not answer at {self.url} in {timeout} s:\n{self.log.read_text()[-3000:]}"
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture(scope="session")
def playwright_browser():
    """Headless Debian chromium through Playwright (skips, with the reason, where either is missing)."""
    if not Path(CHROMIUM).exists():
        pytest.skip(
            f"{CHROMIUM} not found: make test-browser installs Debian's chromium (apt-get install chromium)"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright Python package is missing: make test-browser installs it")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(playwright_browser):
    context = playwright_browser.new_context(viewport={"width": 1280, "height": 1500}, accept_downloads=True)
    pg = context.new_page()
    pg.set_default_timeout(
        180_000
    )  # a loaded 2-core CI machine: sampling and the first page load take a while
    yield pg
    context.close()


@pytest.fixture(scope="module")
def c2i_server(tiny_c2i_checkpoints, tmp_path_factory):
    root = tmp_path_factory.mktemp("studio_c2i")
    ckpt = Path(os.environ.get("GRN_STUDIO_CKPT") or tiny_c2i_checkpoints[0])  # a trained one, for the README
    server = Server(ckpt, root / "work", root / "studio.log")
    try:
        server.wait()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def text_server(tiny_text_checkpoints, tmp_path_factory):
    root = tmp_path_factory.mktemp("studio_text")
    server = Server(tiny_text_checkpoints[0], root / "work", root / "studio.log", "height=16", "width=16")
    try:
        server.wait()
        yield server
    finally:
        server.stop()


@pytest.fixture
def shoot(tmp_path, request):
    """``shoot(page, name, full_page=True)``: a screenshot into the test's tmp dir and ``$GRN_ARTIFACTS`` (the
    visible part only with ``full_page=False``: where a message toast must show)."""
    artefacts = os.environ.get("GRN_ARTIFACTS")

    def _shoot(pg, name: str, full_page: bool = True) -> Path:
        path = tmp_path / f"{request.node.name}-{name}.png"
        pg.screenshot(path=str(path), full_page=full_page)
        if artefacts:
            Path(artefacts).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(artefacts) / path.name)
        return path

    return _shoot
