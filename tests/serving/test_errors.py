"""Every bad input is a 4xx in OpenAI's error shape whose message names the problem, and the server answers a good
request right after it."""

from __future__ import annotations

import io
import struct
import zlib

import httpx
import openai
import pytest

from tests.serving.conftest import API_KEY, LIMITS, data_url, png_bytes

GOOD = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "temperature": 0}


def _chat(**changes):
    return {**GOOD, **changes}


def _image_part(url):
    parts = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "Hi"}]
    return _chat(messages=[{"role": "user", "content": parts}])


def _noise_png(side: int) -> bytes:
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def _header_bomb(width: int, height: int) -> bytes:
    """A valid small PNG whose header claims ``width`` x ``height``: decoding it would take gigabytes."""
    data = bytearray(png_bytes("white", (8, 8)))
    ihdr = data[12:29]  # b"IHDR" + 13 bytes of fields
    fields = struct.pack(">II", width, height) + bytes(ihdr[12:17])
    data[16:29] = fields
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + fields))
    return bytes(data)


def _messages_of(n_chars: int):
    return _chat(messages=[{"role": "user", "content": "word " * (n_chars // 5)}])


CHAT = "/v1/chat/completions"
CASES = {
    # name: (path, body (dict, or raw bytes), status, words the message must hold, param)
    "malformed JSON": (CHAT, b'{"model": "tiny", "messages": [', 400, "could not parse the JSON body", None),
    "body not an object": (CHAT, b"[1, 2]", 400, "must be a JSON object", None),
    "empty messages": (CHAT, _chat(messages=[]), 400, "messages must be a non-empty array", "messages"),
    "unknown model": (CHAT, _chat(model="gpt-4o"), 404, "The model 'gpt-4o' does not exist", "model"),
    "missing model": (CHAT, {"messages": GOOD["messages"]}, 400, "you must provide a model parameter", "model"),
    "non-image upload": (CHAT, _image_part(data_url(b"hello, this is text")), 400, "is not an image", None),
    "oversized image": (
        CHAT,
        _image_part(data_url(_noise_png(300))),
        400,
        f"more than the limit of {LIMITS['max_image_bytes']} bytes",
        None,
    ),
    "decompression bomb": (
        CHAT,
        _image_part(data_url(png_bytes("white", (2000, 2000)))),  # 4 MP in a few kB
        400,
        f"2000x2000 = 4000000 pixels, more than the limit of {LIMITS['max_image_pixels']}",
        None,
    ),
    "header bomb": (
        CHAT,
        _image_part(data_url(_header_bomb(100_000, 100_000))),
        400,
        "decompression bomb",  # PIL's own limit already refuses this header
        None,
    ),
    "bad base64": (CHAT, _image_part("data:image/png;base64,!!!not-base64!!!"), 400, "not valid base64", None),
    "remote image URL": (
        CHAT,
        _image_part("https://example.com/cat.png"),
        400,
        "remote image URLs are not fetched",
        None,
    ),
    "file URL outside the image dir": (CHAT, None, 400, "is outside --image-dir", None),  # filled in by the test
    "context too long": (
        CHAT,
        _messages_of(2000),
        400,
        "maximum context length is 256 tokens, but the messages take",
        "messages",
    ),
    "n > 1": (CHAT, _chat(n=2), 400, "n must be 1 (one choice per request), got 2", "n"),
    "temperature out of range": (
        CHAT,
        _chat(temperature=5),
        400,
        "temperature must be a number in [0, 2]",
        "temperature",
    ),
    "top_p zero": (CHAT, _chat(top_p=0), 400, "top_p must be a number in (0, 1]", "top_p"),
    "too many top_logprobs": (CHAT, _chat(logprobs=True, top_logprobs=50), 400, "top_logprobs must be", "top_logprobs"),
    "top_logprobs without logprobs": (CHAT, _chat(top_logprobs=2), 400, "requires logprobs: true", "top_logprobs"),
    "five stop strings": (CHAT, _chat(stop=list("abcde")), 400, "a list of at most 4", "stop"),
    "max_tokens zero": (CHAT, _chat(max_tokens=0), 400, "max_tokens must be an integer >= 1", "max_tokens"),
    "unknown parameter": (CHAT, _chat(frobnicate=1), 400, "Unrecognized request argument supplied: frobnicate", None),
    "tools": (CHAT, _chat(tools=[{"type": "function"}]), 400, "tools (tool calling) are not supported", "tools"),
    "audio part": (
        CHAT,
        _chat(messages=[{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]),
        400,
        "content part type 'input_audio' is not supported",
        None,
    ),
    "ends with the assistant": (
        CHAT,
        _chat(messages=[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]),
        400,
        "the last message must be from the user",
        "messages",
    ),
    "placeholder in text": (
        CHAT,
        _chat(messages=[{"role": "user", "content": "look: <image>"}]),
        400,
        "must not hold <image>",
        None,
    ),
    "scoring a prompt over the context": (
        "/v1/completions",
        {"model": "tiny", "prompt": "x" * 300, "max_tokens": 0, "echo": True, "logprobs": 0},
        400,
        "maximum context length is 256 tokens, but the prompt take 300 tokens",
        "prompt",
    ),
    "empty prompt": ("/v1/completions", {"model": "tiny", "prompt": ""}, 400, "prompt is empty", "prompt"),
    "token ids outside the vocabulary": (
        "/v1/completions",
        {"model": "tiny", "prompt": [5, 300]},
        400,
        "token ids in [1, 257)",
        "prompt",
    ),
    "suffix": (
        "/v1/completions",
        {"model": "tiny", "prompt": "a", "suffix": "b"},
        400,
        "suffix is not supported",
        None,
    ),
    "unknown route": ("/v1/embeddings", {"model": "tiny", "input": "a"}, 404, "no route POST /v1/embeddings", None),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_named_and_the_server_goes_on(cli_server, served_dir, name):
    path, body, status, words, param = CASES[name]
    if name == "file URL outside the image dir":
        body = _image_part((served_dir / "images" / ".." / "outside.png").as_uri())
    headers = {"authorization": f"Bearer {API_KEY}", "content-type": "application/json"}
    with httpx.Client(base_url=cli_server.url, headers=headers, timeout=60) as http:
        reply = http.post(path, content=body) if isinstance(body, bytes) else http.post(path, json=body)
        assert reply.status_code == status, reply.text
        error = reply.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert words in error["message"]
        assert error["type"] == "invalid_request_error"
        if param is not None:
            assert error["param"] == param
        good = http.post(CHAT, json=GOOD)
        assert good.status_code == 200 and good.json()["choices"][0]["message"]["role"] == "assistant"


def test_body_over_the_limit_is_refused_before_parsing(cli_server):
    headers = {"authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=cli_server.url, headers=headers, timeout=60) as http:
        big = b"x" * (LIMITS["max_body_bytes"] + 1)
        reply = http.post(CHAT, content=big)
        assert reply.status_code == 413
        assert f"larger than the limit of {LIMITS['max_body_bytes']} bytes" in reply.json()["error"]["message"]

        def chunks():  # no Content-Length: counted as it arrives
            for _ in range(LIMITS["max_body_bytes"] // 100_000 + 2):
                yield b" " * 100_000

        assert http.post(CHAT, content=chunks()).status_code == 413
        assert http.post(CHAT, json=GOOD).status_code == 200


def test_the_openai_client_raises_the_named_error(client):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "Hi"}])
    assert info.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError, match="context_length_exceeded|maximum context length"):
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "word " * 400}])
    assert client.chat.completions.create(**GOOD).choices[0].message.role == "assistant"
