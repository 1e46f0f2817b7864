"""One call from a loaded model to a running server: ``build_server`` (the app and its loop) and ``serve``."""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path

from .app import create_app
from .engine import Engine
from .images import ImageLimits
from .protocol import Served

__all__ = ["build_server", "serve"]


def build_server(
    model,
    model_id: str,
    *,
    api_key: str | None = None,
    max_batch: int = 16,
    state_cache_mb: float = 256,
    prefill_chunk: int = 256,
    max_image_bytes: int = 8 << 20,
    max_image_pixels: int = 25_000_000,
    image_dir: str | Path | None = None,
    max_body_bytes: int = 16 << 20,
    compile: bool | str = False,
):
    """The ASGI app and its ``Engine`` for ``model`` (a ``VisualRWKV`` in eval mode), served as ``model_id``.

    Args:
        model: The model.
        model_id: Its name in the API.
        api_key: Required as a bearer token on ``/v1/`` (``None``: open).
        max_batch: Requests prefilling or decoding at once.
        state_cache_mb: Prefix-state cache budget in MiB (0: off).
        prefill_chunk: Prompt tokens per prefill chunk between decode steps.
        max_image_bytes, max_image_pixels, image_dir: ``ImageLimits``.
        max_body_bytes: Request-body limit.
        compile: Compile the decode step.
    """
    from ..models.config import make_tokenizer

    tokenizer = make_tokenizer(model.data_config)
    engine = Engine(
        model,
        model_id,
        decode_bytes=tokenizer.decode_bytes,
        max_batch=max_batch,
        prefill_chunk=prefill_chunk,
        cache_bytes=int(state_cache_mb * (1 << 20)),
        compile=compile,
    )
    limits = ImageLimits(max_image_bytes, max_image_pixels, Path(image_dir) if image_dir else None)
    served = Served(model, model_id, tokenizer, limits)
    return create_app(engine, served, api_key=api_key, max_body_bytes=max_body_bytes), engine


def serve(model, model_id: str, *, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info", **options):
    """Build the server (``build_server(model, model_id, **options)``) and run it with uvicorn until stopped."""
    import uvicorn

    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback and options.get("api_key") is None:
        print(f"warning: serving on {host} without --api-key: anyone who reaches it can use it", file=sys.stderr)
    app, _ = build_server(model, model_id, **options)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)
