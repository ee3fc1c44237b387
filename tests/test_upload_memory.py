"""Uploads cannot exhaust the server's memory: eight concurrent uploads of a 49-megapixel PNG (small on the
wire, 147 MB of pixels each) raise a live `xmodal serve` process's peak resident memory by at most 600 MB,
and the memory goes back afterwards. The server decodes uploads two at a time on two long-lived threads
and returns what a decode freed (measured before: eight uploads added 1.4 GB, and it stayed)."""
from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from conftest import draw

httpx = pytest.importorskip("httpx")
TESTS = Path(__file__).resolve().parent
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")]


def status_mb(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(key)


def test_eight_uploads_of_a_49_megapixel_photo_raise_the_peak_by_at_most_600_mb(tmp_path):
    photos = tmp_path / "photos"
    draw(photos / "red.jpg", "red")
    library = tmp_path / "library"
    env = {k: v for k, v in os.environ.items() if k != "XMODAL_LIBRARY"}
    xmodal = [sys.executable, str(TESTS / "fake_xmodal.py")]
    subprocess.run([*xmodal, "index", str(photos), "--library", str(library), "--model", "fake-colour"],
                   check=True, env=env, capture_output=True, timeout=120)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([*xmodal, "serve", "--library", str(library), "--port", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(base + "/api/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline and server.poll() is None, "the server did not start"
            time.sleep(0.2)
        buf = io.BytesIO()
        Image.new("RGB", (7000, 7000), (10, 120, 200)).save(buf, format="PNG")
        png = buf.getvalue()

        def upload() -> int:
            return httpx.post(base + "/api/search/image?k=1", files={"file": ("big.png", png, "image/png")},
                              timeout=300).status_code

        assert upload() == 200  # warm-up: first decode, first search
        peak, rss = status_mb(server.pid, "VmHWM"), status_mb(server.pid, "VmRSS")
        codes: list[int] = []
        threads = [threading.Thread(target=lambda: codes.append(upload())) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert codes == [200] * 8
        assert status_mb(server.pid, "VmHWM") - peak <= 600
        assert status_mb(server.pid, "VmRSS") - rss <= 200  # given back, not kept in per-thread arenas
    finally:
        server.terminate()
        server.wait(timeout=30)
