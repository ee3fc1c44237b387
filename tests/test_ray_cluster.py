"""`xmodal index --engine ray --ray-address` on a two-node Ray cluster on this machine (`ray start --head` and
a second `ray start --address` node, one CPU each: the run needs both, since its two workers take one CPU each), with the driver
SIGKILLed mid-run: the rerun completes the library without losing or doubling a photo, it equals the local
pipeline's, and `xmodal check` finds nothing wrong. Both nodes are stopped by their pids."""
from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from conftest import vectors_by_path  # noqa: F401 - fixtures and helpers
from test_ray_index import assert_same_library, collection
from xmodal.indexer.api import index_folders

TESTS = Path(__file__).resolve().parent
RAY = str(Path(sys.executable).parent / "ray")
FAKE_XMODAL = [sys.executable, str(TESTS / "fake_xmodal.py")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def count_images(library: Path) -> int:
    try:
        with sqlite3.connect(f"file:{library / 'library.db'}?mode=ro", uri=True, timeout=1) as db:
            return db.execute("select count(*) from images").fetchone()[0]
    except sqlite3.Error:
        return 0


def test_a_two_node_cluster_builds_the_library_and_a_killed_driver_resumes(tmp_path):
    photos = collection(tmp_path / "photos")
    # RAY_AUTH_MODE=disabled: a throwaway cluster on 127.0.0.1, no token to hand around
    env = {**os.environ, "XMODAL_PLUGINS": "fake_xmodal", "FAKE_ENCODER_DELAY": "0.3", "RAY_AUTH_MODE": "disabled",
           "PYTHONPATH": os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH")) if p)}
    port = free_port()
    address = f"127.0.0.1:{port}"
    common = ["--num-cpus", "1", "--num-gpus", "0", "--block", "--disable-usage-stats"]
    nodes = [subprocess.Popen([RAY, "start", "--head", "--port", str(port), "--node-ip-address", "127.0.0.1",
                               "--include-dashboard", "false", *common], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        time.sleep(2)  # the head's address is taken; the second node joins it when it is up
        nodes.append(subprocess.Popen([RAY, "start", "--address", address, "--node-ip-address", "127.0.0.1",
                                       *common], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        lib = tmp_path / "lib"
        command = [*FAKE_XMODAL, "index", str(photos), "--library", str(lib), "--model", "fake-colour",
                   "--engine", "ray", "--ray-address", address, "--workers", "2", "--shard-size", "4", "--json"]
        driver = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while count_images(lib) == 0 and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        driver.send_signal(signal.SIGKILL)
        driver.communicate()
        committed = count_images(lib)
        assert 0 < committed < 40, f"the driver was not killed mid-run ({committed} photos committed)"

        rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
        assert rerun.returncode == 0, rerun.stderr
        report = json.loads(rerun.stdout)
        assert report["unchanged"] == committed and report["added"] == 40 - committed
        assert count_images(lib) == 40
        index_folders(tmp_path / "local", [photos], model="fake-colour")
        assert_same_library(lib, tmp_path / "local")
        check = subprocess.run([*FAKE_XMODAL, "check", "--library", str(lib), "--json"], env=env,
                               capture_output=True, text=True, timeout=120)
        assert check.returncode == 0, check.stdout + check.stderr
    finally:
        for node in reversed(nodes):  # SIGTERM: `ray start --block` stops its node's processes, then exits
            node.terminate()
        for node in nodes:
            try:
                node.wait(timeout=30)
            except subprocess.TimeoutExpired:
                node.kill()
