"""Servers for the serving tests, on loopback only: ``rwkvblocks serve`` in a subprocess (the command as a user runs
it, with every limit set small) and an in-process server whose decode loop can be slowed down and instrumented."""

from __future__ import annotations

import base64
import contextlib
import io
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch

from assemblies.models import VisualRWKV, create_assembly
from tests.helpers import spread_weights_

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "test-key-0123456789"
LIMITS = {"max_image_bytes": 200_000, "max_image_pixels": 1_000_000, "max_body_bytes": 1_000_000}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png_bytes(colour, size=(60, 40), fmt="PNG") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, fmt)
    return buf.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def tiny_model(name: str = "visualrwkv_tiny", seed: int = 0) -> VisualRWKV:
    """A toy model in fp64 whose every path carries signal, so that answers depend on the prompt and batched
    decoding equals decoding alone exactly."""
    torch.manual_seed(seed)
    model = create_assembly(name, dtype=torch.float64)
    spread_weights_(model.lm, lora=0)
    return model.eval()


def wait_until(check, timeout: float = 20, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class CliServer:
    """``python -m assemblies.cli serve`` on a free loopback port, with an API key, an image folder and small limits."""

    def __init__(self, model_dir: Path, image_dir: Path, log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = [sys.executable, "-m", "assemblies.cli", "serve", "--model", str(model_dir), "--name", "tiny"]
        args += ["--port", str(self.port), "--api-key", API_KEY, "--image-dir", str(image_dir)]
        args += ["--state-cache-mb", "1", "--prefill-chunk", "64", "--max-batch", "16"]
        for name, value in LIMITS.items():
            args += [f"--{name.replace('_', '-')}", str(value)]
        self.log = log
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}  # a toy model: one thread is enough
        with open(log, "wb") as out:  # the child keeps its own descriptor
            self.process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_until(self._up, timeout=120, what="the server to answer /health")
        except AssertionError:
            self.close()
            raise AssertionError(f"the server did not start:\n{log.read_text()[-3000:]}") from None

    def _up(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"the server exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}")
        try:
            return httpx.get(self.url + "/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def health(self) -> dict:
        return httpx.get(self.url + "/health", timeout=10).json()

    def rss_kib(self) -> int:
        with open(f"/proc/{self.process.pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="session")
def served_dir(tmp_path_factory):
    """The subprocess server's model (saved), its image folder with one image, and a file outside the folder."""
    root = tmp_path_factory.mktemp("serve")
    tiny_model().save_pretrained(root / "model")
    (root / "images").mkdir()
    (root / "images" / "red.png").write_bytes(png_bytes("red"))
    (root / "outside.png").write_bytes(png_bytes("blue"))
    return root


@pytest.fixture(scope="session")
def cli_server(served_dir):
    server = CliServer(served_dir / "model", served_dir / "images", served_dir / "server.log")
    yield server
    server.close()


@pytest.fixture(scope="session")
def reference(served_dir):
    """The subprocess server's model, loaded here for the oracles."""
    return VisualRWKV.from_pretrained(served_dir / "model").eval()


@pytest.fixture
def client(cli_server):
    import openai

    return openai.OpenAI(base_url=cli_server.url + "/v1", api_key=API_KEY, max_retries=0, timeout=60)


class LocalServer:
    """``build_server`` + uvicorn in a thread of the test process; ``delay`` seconds are slept after every prefill
    chunk and decode step, and ``work`` records them (``("prefill", tokens)``, ``("step", batch)``)."""

    def __init__(self, model, model_id: str = "local", **options):
        import uvicorn

        from assemblies.serving import build_server

        self.delay, self.work = 0.0, []
        self.app, self.engine = build_server(model, model_id, **options)
        self.engine._trace = self._trace
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_until(lambda: self.server.started, what="uvicorn to start")

    def _trace(self, kind: str, size: int) -> None:
        self.work.append((kind, size))
        if self.delay:
            time.sleep(self.delay)

    @contextlib.contextmanager
    def slowed(self, delay: float):
        self.delay = delay
        try:
            yield
        finally:
            self.delay = 0.0

    def idle(self) -> bool:
        s = self.engine.stats()
        return not (s["waiting"] or s["prefilling"] or s["decoding"] or s["warm_ups"]["waiting"])

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture(scope="session")
def local_server():
    """An in-process server of the image-first toy model (its follow-up turns reuse the cached state)."""
    server = LocalServer(tiny_model("visualrwkv_base_tiny", seed=1), prefill_chunk=16, state_cache_mb=8)
    yield server
    server.close()
