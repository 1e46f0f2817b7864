"""Continuous batching under load (loopback, bounded loops): 16 simultaneous streams each get exactly their answer
alone, resident memory stays flat over many finished requests, and a client that goes away frees its slot."""

from __future__ import annotations

import threading

import httpx
import openai

from tests.serving.conftest import data_url, png_bytes, wait_until

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]


def _messages(i: int) -> list[dict]:
    question = f"Question {i}: what do you see, and how many things are there?"
    if i % 2:
        return [{"role": "user", "content": question}]
    image = {"type": "image_url", "image_url": {"url": data_url(png_bytes(COLOURS[i // 2], (40 + i, 50)))}}
    return [{"role": "user", "content": [image, {"type": "text", "text": question}]}]


def _streams(client, indices, max_tokens: int) -> dict[int, str]:
    """Every index streams at once (released together); returns the joined pieces per index."""
    answers, errors = {}, []
    barrier = threading.Barrier(len(indices))

    def run(i):
        try:
            barrier.wait(30)
            stream = client.chat.completions.create(
                model="tiny", messages=_messages(i), temperature=0, max_tokens=max_tokens, stream=True
            )
            answers[i] = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        except Exception as err:  # reported below, in the test's thread
            errors.append(f"{i}: {err!r}")

    threads = [threading.Thread(target=run, args=(i,)) for i in indices]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    return answers


def test_16_simultaneous_streams_get_their_own_greedy_answers_and_memory_stays_flat(cli_server, client):
    alone = {
        i: client.chat.completions.create(model="tiny", messages=_messages(i), temperature=0, max_tokens=40)
        .choices[0]
        .message.content
        for i in range(16)
    }
    assert len(set(alone.values())) >= 8, "the prompts must lead to different answers for cross-talk to show"
    together = _streams(client, range(16), 40)
    assert together == alone
    peak = cli_server.health()["peak_decoding"]
    assert peak >= 8, f"at most {peak} requests decoded in one step: not batched"

    rss = [cli_server.rss_kib()]  # after warm-up: 32 requests served
    rounds = 6
    for _ in range(rounds):
        assert _streams(client, range(16), 40) == alone
        rss.append(cli_server.rss_kib())
    health = cli_server.health()
    assert health["waiting"] == health["prefilling"] == health["decoding"] == 0
    growth = rss[-1] - rss[0]
    print(
        f"server RSS after 32 requests: {rss[0] / 1024:.1f} MiB; after {rounds} more rounds of 16 streams: "
        + ", ".join(f"{r / 1024:.1f}" for r in rss[1:])
        + f" MiB (growth {growth / 1024:+.1f} MiB over {rounds * 16} requests); cache {health['cache']}"
    )
    # a leak of one state, image or answer per request would be tens of KiB each; the allocator settles within MiBs
    assert growth < 8 * 1024, f"resident memory grew by {growth} KiB over {rounds * 16} finished requests"


def test_a_client_that_disconnects_mid_stream_frees_its_slot(local_server):
    client = openai.OpenAI(base_url=local_server.url + "/v1", api_key="-", max_retries=0)
    kwargs = dict(model="local", prompt="Once upon a time", max_tokens=200, temperature=0)
    alone = client.completions.create(**kwargs).choices[0].text
    before = local_server.engine.stats()
    with local_server.slowed(0.01):  # 200 tokens take 2 s or more: time to hang up in the middle
        kept = {}

        def keep():
            stream = client.completions.create(**kwargs, stream=True)
            kept["text"] = "".join(c.choices[0].text for c in stream if c.choices)

        keeper = threading.Thread(target=keep)
        keeper.start()
        http = httpx.Client(base_url=local_server.url, timeout=30)
        with http.stream("POST", "/v1/completions", json={**kwargs, "stream": True}) as reply:
            lines = reply.iter_lines()
            assert next(lines).startswith("data: ")
            wait_until(lambda: local_server.engine.stats()["decoding"] == 2, what="both streams decoding")
        http.close()  # hang up in the middle of the stream
        wait_until(lambda: local_server.engine.stats()["cancelled"] == before["cancelled"] + 1, what="the drop")
        assert local_server.engine.stats()["decoding"] == 1  # the other stream goes on
        keeper.join(60)
    assert kept["text"] == alone

    # not streamed: the client gives up waiting, the request leaves the batch
    with local_server.slowed(0.01):
        try:
            httpx.post(local_server.url + "/v1/completions", json=kwargs, timeout=0.5)
            raise AssertionError("a 200-token completion at 10 ms per step cannot answer within 0.5 s")
        except httpx.ReadTimeout:
            pass
        wait_until(lambda: local_server.engine.stats()["cancelled"] == before["cancelled"] + 2, what="the drop")
    wait_until(local_server.idle, what="an idle loop")
    assert local_server.engine.stats()["finished"] == before["finished"] + 1  # only the stream that stayed
