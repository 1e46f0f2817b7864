"""The chat page at ``/`` in headless Chromium (Debian's ``chromium``; Playwright drives it through
``executable_path``, as it cannot download browsers here): upload or drop an image, ask, watch the answer stream,
ask a follow-up, reset; two browser contexts keep separate conversations; a screenshot is kept."""

from __future__ import annotations

import base64
import shutil

import openai
import pytest

from tests.serving.conftest import data_url, png_bytes

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium installed (apt-get install chromium; `make test` installs it as root)"
)

WATCH = """() => {
    window.lengths = [];
    new MutationObserver(() => {
        const text = document.querySelector('.msg.assistant:last-of-type .text');
        if (text) window.lengths.push(text.textContent.length);
    }).observe(document.getElementById('log'), {subtree: true, childList: true, characterData: true});
}"""
DROP = """(b64) => {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const data = new DataTransfer();
    data.items.add(new File([bytes], 'blue.png', {type: 'image/png'}));
    document.getElementById('drop').dispatchEvent(new DragEvent('drop', {dataTransfer: data, bubbles: true}));
}"""
TEXTS = "(kind) => [...document.querySelectorAll('.msg.' + kind + ' .text')].map((e) => e.textContent)"


def _ask(page, question: str) -> None:
    count = page.evaluate("document.querySelectorAll('.msg.assistant').length")
    page.fill("#question", question)
    page.click("#send")
    page.wait_for_function(
        f"document.querySelectorAll('.msg.assistant').length === {count + 1}"
        " && !document.querySelector('.msg.assistant.streaming')",
        timeout=60_000,
    )


def _api_answer(client, turns) -> str:
    reply = client.chat.completions.create(model="local", messages=turns, temperature=0, max_tokens=40)
    return reply.choices[0].message.content


def _image_turn(png: bytes, question: str) -> dict:
    parts = [{"type": "image_url", "image_url": {"url": data_url(png)}}, {"type": "text", "text": question}]
    return {"role": "user", "content": parts}


def test_the_chat_page_in_headless_chromium(local_server, tmp_path):
    from playwright.sync_api import sync_playwright

    red, blue = png_bytes("red", (64, 48)), png_bytes("blue", (48, 64))
    (tmp_path / "red.png").write_bytes(red)
    client = openai.OpenAI(base_url=local_server.url + "/v1", api_key="-", max_retries=0)
    with local_server.slowed(0.02), sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        pages = []
        for _ in range(2):  # two contexts: two people, each with a conversation of their own
            # bypass_csp: the test's own scripts (wait_for_function) are evaluated strings, which the page's CSP forbids
            context = browser.new_context(viewport={"width": 1100, "height": 720}, bypass_csp=True)
            page = context.new_page()
            page.goto(local_server.url + "/")
            page.wait_for_function("document.getElementById('model-name').textContent === 'local'")
            page.fill("#max-tokens", "40")
            pages.append(page)
        a, b = pages
        a.set_input_files("#image-input", str(tmp_path / "red.png"))  # upload
        b.evaluate(DROP, base64.b64encode(blue).decode())  # drag and drop
        for page in pages:
            page.wait_for_selector("#preview:not([hidden])")
        a.evaluate(WATCH)
        _ask(a, "What colour is it?")
        _ask(b, "Which colour is this?")
        lengths = a.evaluate("window.lengths")
        assert len(set(lengths) - {0}) >= 2, f"the answer did not stream: text lengths {lengths}"

        _ask(a, "Are you sure?")  # follow-ups, each in its own conversation
        _ask(b, "And the shape?")
        assert a.evaluate(TEXTS, "user") == ["What colour is it?", "Are you sure?"]
        assert b.evaluate(TEXTS, "user") == ["Which colour is this?", "And the shape?"]
        for page, png, questions in (
            (a, red, ["What colour is it?", "Are you sure?"]),
            (b, blue, ["Which colour is this?", "And the shape?"]),
        ):
            answers = page.evaluate(TEXTS, "assistant")
            turns = [_image_turn(png, questions[0])]
            assert answers[0] == _api_answer(client, turns)
            turns += [{"role": "assistant", "content": answers[0]}, {"role": "user", "content": questions[1]}]
            assert answers[1] == _api_answer(client, turns), "the follow-up is answered from the whole conversation"
        meta = a.inner_text(".msg.assistant:last-of-type .meta")
        assert "prompt tokens reused" in meta and not meta.split("tokens; ")[1].startswith("0 of")
        shot = tmp_path / "serve-page.png"
        a.screenshot(path=str(shot), full_page=True)
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        print(f"screenshot: {shot}")

        a.click("#reset")
        assert a.evaluate(TEXTS, "user") == [] and a.is_hidden("#preview")
        _ask(a, "Hello")
        assert a.evaluate(TEXTS, "assistant") == [_api_answer(client, [{"role": "user", "content": "Hello"}])]
        assert len(b.evaluate(TEXTS, "user")) == 2  # the other conversation is untouched
        browser.close()
