"""The server under concurrent clients: tokens/s and time to first token at 1, 4 and 16 clients, on the CPU.

    python benchmarks/serve.py                              # small model (C=512, 6 layers), 1/4/16 clients
    python benchmarks/serve.py --out benchmarks/results     # also write serve-cpu.md there
    python benchmarks/serve.py --screenshot benchmarks/results/serve-page.png   # and a picture of the chat page

The server (``assemblies.serving.build_server``) runs in this process under uvicorn on a free loopback port; the
clients are threads with the official ``openai`` client, each streaming chat completions about an image (a
different image and question per client, so no prompt is shared). Every answer has exactly ``--max-tokens``
tokens (``logit_bias`` bans the end-of-text id and ``"\\n"``, so the turn cannot end early). Per concurrency
level, after one warm-up round: every client sends ``--requests`` requests one after the other, all clients at
once. Reported: completion tokens per second over all clients (wall time of the round), per stream, and the time
to first token (request sent to first text chunk; median and 90th percentile), and the largest decode batch the
loop ran. The model has random weights (a preset's structure with ``--dim``/``--layers``): speed does not depend
on the values. ``--screenshot`` drives the chat page of a toy image-first model in headless Chromium (Debian's
``chromium``): an image, a question and a follow-up, then saves the picture.
"""

from __future__ import annotations

import argparse
import base64
import io
import shutil
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._machine import cpu_name  # noqa: E402

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black", "gray", "brown"]


def _png(colour, size) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


def _messages(i: int) -> list[dict]:
    url = "data:image/png;base64," + base64.b64encode(_png(COLOURS[i % len(COLOURS)], (64 + i, 48))).decode()
    question = f"Client {i}: describe the picture in detail."
    parts = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": question}]
    return [{"role": "user", "content": parts}]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, model, **options):
        import uvicorn

        from assemblies.serving import build_server

        self.app, self.engine = build_server(model, "bench", **options)
        self.url = f"http://127.0.0.1:{_free_port()}"
        port = int(self.url.rsplit(":", 1)[1])
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.05)

    def close(self):
        self.server.should_exit = True
        self.thread.join(30)


def _round(client, clients: int, requests: int, max_tokens: int, ban: dict) -> dict:
    """Every client sends ``requests`` streamed requests in a row, all clients at once."""
    ttft, tokens, errors = [], [], []
    barrier = threading.Barrier(clients + 1)

    def run(i):
        barrier.wait()
        for _ in range(requests):
            try:
                sent = time.perf_counter()
                stream = client.chat.completions.create(
                    model="bench",
                    messages=_messages(i),
                    max_tokens=max_tokens,
                    temperature=0,
                    logit_bias=ban,
                    stream=True,
                    stream_options={"include_usage": True},
                )
                first = None
                for chunk in stream:
                    if first is None and chunk.choices and chunk.choices[0].delta.content:
                        first = time.perf_counter() - sent
                    if chunk.usage is not None:
                        tokens.append(chunk.usage.completion_tokens)
                ttft.append(first)
            except Exception as err:  # counted and shown
                errors.append(repr(err))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed, e.g. {errors[0]}")
    return {"wall": wall, "tokens": sum(tokens), "ttft": sorted(t for t in ttft if t is not None)}


def _screenshot(path: Path) -> None:
    """The chat page of a toy image-first model (its follow-up turn reuses the state), after two questions."""
    from playwright.sync_api import sync_playwright

    from assemblies.models import create_assembly

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("--screenshot needs Chromium (apt-get install chromium)")
    image = path.with_suffix(".input.png")
    image.write_bytes(_png("teal", (96, 64)))
    server = Server(create_assembly("visualrwkv_base_tiny").eval())
    url = server.url
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, headless=True)
            page = browser.new_context(viewport={"width": 1100, "height": 640}, bypass_csp=True).new_page()
            page.goto(url + "/")
            page.wait_for_function("document.getElementById('model-name').textContent === 'bench'")
            page.fill("#max-tokens", "24")
            page.set_input_files("#image-input", str(image))
            page.wait_for_selector("#preview:not([hidden])")
            for n, question in enumerate(["What is in the picture?", "And what colour is it?"], 1):
                page.fill("#question", question)
                page.click("#send")
                page.wait_for_function(
                    f"document.querySelectorAll('.msg.assistant .meta').length === {n}", timeout=120_000
                )
            path.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(path))
            browser.close()
    finally:
        image.unlink()
        server.close()
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="visualrwkv_tiny", help="preset (random weights) or save_pretrained dir")
    parser.add_argument("--dim", type=int, default=512, help="language-model width (presets only)")
    parser.add_argument("--layers", type=int, default=6, help="language-model layers (presets only)")
    parser.add_argument("--clients", default="1,4,16", help="concurrency levels")
    parser.add_argument("--requests", type=int, default=2, help="requests per client per level")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--prefill-chunk", type=int, default=256)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, help="write serve-cpu.md into this folder")
    parser.add_argument("--screenshot", type=Path, help="save a screenshot of the chat page here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import openai

    from assemblies.models import VisualRWKV, create_assembly

    torch.manual_seed(0)
    if Path(args.model).is_dir():
        model, shape = VisualRWKV.from_pretrained(args.model), args.model
    else:
        head_dim = min(64, args.dim)
        lm = {"dim": args.dim, "num_layers": args.layers, "head_dim": head_dim}
        model, shape = create_assembly(args.model, lm=lm), f"{args.model} with C={args.dim}, {args.layers} layers"
    model.eval()
    params = sum(p.numel() for p in model.lm.parameters()) / 1e6
    levels = [int(c) for c in args.clients.split(",")]
    server = Server(model, max_batch=max(levels), prefill_chunk=args.prefill_chunk, state_cache_mb=64)
    # end of text (0), "\n" (11) and the World vocabulary's "\n\n" (261): every answer runs to max_tokens
    ban = {str(t): -100 for t in (0, 11, 261) if t < model.lm.vocab_size}
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="-", max_retries=0, timeout=600)
    rows = []
    try:
        _round(client, 1, 1, 4, ban)  # warm-up
        for clients in levels:
            server.engine.peak_decoding = 0  # the largest batch of this level only
            r = _round(client, clients, args.requests, args.max_tokens, ban)
            peak = server.engine.stats()["peak_decoding"]
            ttft = r["ttft"]
            p90 = ttft[min(len(ttft) - 1, int(0.9 * len(ttft)))]
            rows.append(
                {
                    "clients": clients,
                    "requests": clients * args.requests,
                    "tokens": r["tokens"],
                    "wall": r["wall"],
                    "tps": r["tokens"] / r["wall"],
                    "per_stream": r["tokens"] / r["wall"] / clients,
                    "ttft_median": statistics.median(ttft) * 1e3,
                    "ttft_p90": p90 * 1e3,
                    "peak": peak,
                }
            )
    finally:
        server.close()
    if args.screenshot:
        _screenshot(args.screenshot)

    title = (
        f"# Serving throughput on {cpu_name()}, CPU, fp32\n\n"
        f"{shape} (LM {params:.1f} M parameters, {model.image_tokens} image tokens), random weights; streamed chat "
        f"completions about an image, {args.max_tokens} tokens each, greedy; {args.requests} requests per client "
        f"in a row; torch threads: {torch.get_num_threads()}; command: `python benchmarks/serve.py`"
    )
    lines = [
        "| clients | requests | tokens | wall s | tokens/s (all) | tokens/s per stream | TTFT median ms | TTFT p90 ms "
        "| largest decode batch |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['clients']} | {r['requests']} | {r['tokens']} | {r['wall']:.2f} | {r['tps']:.1f} "
            f"| {r['per_stream']:.1f} | {r['ttft_median']:.0f} | {r['ttft_p90']:.0f} | {r['peak']} |"
        )
    base = rows[0]["tps"]
    ratios = ", ".join(f"{r['clients']} clients {r['tps'] / base:.2f}x" for r in rows[1:])
    lines.append("")
    lines.append(f"Aggregate throughput against {rows[0]['clients']} client: {ratios or '-'}.")
    print(title + "\n")
    print("\n".join(lines))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "serve-cpu.md").write_text(title + "\n\n" + "\n".join(lines) + "\n")
    return lines


if __name__ == "__main__":
    main(sys.argv[1:])
