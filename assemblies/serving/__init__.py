"""Serving (``rwkvblocks serve``): an OpenAI-compatible API with images and streaming, and a chat page at ``/``.

- ``engine``: the one decode loop — continuous batching over a ``Decoder``, prefill in chunks between decode
  steps, prefix-state reuse, per-request faults isolated.
- ``protocol``: the OpenAI request fields checked into jobs; responses and stream chunks in OpenAI's shape
  (``errors.ApiError``: an error as OpenAI's error object).
- ``images``: ``data:`` and ``file://`` (inside ``--image-dir``) image URLs decoded in memory under byte and pixel
  limits.
- ``app``: the Starlette app (uvicorn runs it): routes, server-sent events, API key and body-size guard, the page.
- ``server``: ``build_server`` and ``serve`` from a loaded model.

Needs the ``serve`` extra (``pip install 'rwkvblocks[serve]'``: starlette and uvicorn).
"""

from .app import create_app
from .engine import Engine, Job
from .errors import ApiError
from .images import ImageLimits, load_image_url
from .protocol import Served
from .server import build_server, serve

__all__ = [
    "ApiError",
    "Engine",
    "ImageLimits",
    "Job",
    "Served",
    "build_server",
    "create_app",
    "load_image_url",
    "serve",
]
