"""The lmms-eval plugin: found through lmms-eval's entry point, its two methods called with lmms-eval's own
``Instance`` requests and checked against our generation and full forwards, and lmms-eval's evaluator run on a
generated local task (offline)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from PIL import Image

from assemblies import create_assembly, generate
from assemblies.evaluation import prefill_conversation
from assemblies.models.config import default_sampling, make_prompt_builder, make_tokenizer
from rwkvblocks.generation import PrefixCache

lmms_eval = pytest.importorskip("lmms_eval", reason="lmms-eval is not installed (pip install 'rwkvblocks[lmms]')")
from lmms_eval.api.instance import Instance  # noqa: E402

from assemblies.evaluation.lmms import RWKVBlocksLMM  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
COLOURS = ("red", "blue", "green")


@pytest.fixture(scope="module")
def plugin():
    torch.manual_seed(0)
    model = create_assembly("visualrwkv_base_tiny").eval()  # image-first: the image prefix state is shared
    lm = RWKVBlocksLMM(pretrained=model, batch_size=2, max_new_tokens=4)
    docs = [{"image": Image.new("RGB", (60, 50), c), "question": f"Is the picture {c}?"} for c in COLOURS]
    lm.task_dict = {"toy": {"test": docs}}
    return lm


def _visual(doc):
    return [doc["image"]]


def _request(kind, args, doc_id):
    return Instance(request_type=kind, arguments=args, idx=0, metadata={"task": "toy", "doc_id": doc_id, "repeats": 1})


def test_the_entry_point_registers_the_plugin():
    from lmms_eval.models import get_model

    assert get_model("rwkvblocks") is RWKVBlocksLMM and get_model("visualrwkv") is RWKVBlocksLMM


def test_generate_until_equals_our_generation(plugin):
    kwargs = {"until": ["\n\n", "."], "max_new_tokens": 5, "temperature": 0, "do_sample": False}
    requests = [
        _request("generate_until", (d["question"], dict(kwargs), _visual, i, "toy", "test"), i)
        for i, d in enumerate(plugin.task_dict["toy"]["test"])
    ]
    got = plugin.generate_until(requests)
    config = default_sampling(plugin.model.data_config, max_new_tokens=5)
    config = dataclasses.replace(config, stop_strings=config.stop_strings + ("\n\n", "."))
    for doc, text in zip(plugin.task_dict["toy"]["test"], got):
        conv = [{"from": "human", "value": "<image>\n" + doc["question"]}]
        assert text == generate(plugin.model, conv, doc["image"], config)[0].text
        assert "." not in text


def _full_forward(model, question, image, continuation):
    """(summed log p, greedy?) of the continuation from one full forward over prompt + continuation."""
    tokenizer = make_tokenizer(model.data_config)
    conv = [{"from": "human", "value": "<image>\n" + question}]
    ids, _, starts = (
        make_prompt_builder(model.data_config, tokenizer).build(conv, mode="inference").expand(model.image_tokens)
    )
    cont = tokenizer.encode(" " + continuation)
    spans = torch.tensor([[0, s, 0, model.image_tokens] for s in starts])
    with torch.no_grad():
        logits = model(torch.tensor([ids + cont]), None, model.encoder.transform([image]), spans).logits
    scored = logits[0, len(ids) - 1 : -1]
    logp = torch.log_softmax(scored.double(), -1)[torch.arange(len(cont)), torch.tensor(cont)].sum()
    return float(logp), bool((scored.argmax(-1) == torch.tensor(cont)).all()), len(cont)


def test_loglikelihood_shares_one_prefill_per_document_and_matches_full_forwards(plugin):
    model, docs = plugin.model, plugin.task_dict["toy"]["test"]
    plugin.cache = PrefixCache(max_bytes=1 << 26)  # count image encodings from an empty cache
    choices = ["Yes", "No", "yes it is"]
    requests, expected = [], []
    for i, doc in enumerate(docs):
        for choice in choices:
            target = choice if i != 2 else (lambda d, c=choice: c)  # doc_to_target may be a function of the doc
            requests.append(_request("loglikelihood", (doc["question"], target, _visual, i, "toy", "test"), i))
            expected.append(_full_forward(model, doc["question"], doc["image"], choice))

    calls = []
    original = model.encoder.forward
    model.encoder.forward = lambda images: calls.append(len(images)) or original(images)
    try:
        got = plugin.loglikelihood(requests)
        again = plugin.loglikelihood(requests[:2])  # same images: the prefix states come from the cache
    finally:
        model.encoder.forward = original
    assert calls == [1, 1, 1], "one image encoding per document, none for the repeated requests"
    for (loss, is_greedy), (logp, full_greedy, n) in zip(got, expected):
        assert loss == pytest.approx(-logp / n, rel=1e-4, abs=1e-5)  # lmms-eval's convention: the mean NLL
        assert is_greedy == full_greedy
    assert again == got[:2]


def test_the_greedy_flag_is_true_exactly_for_the_greedy_continuation(plugin):
    model, doc = plugin.model, plugin.task_dict["toy"]["test"][0]
    conv = [{"from": "human", "value": "<image>\n" + doc["question"]}]
    config = default_sampling(model.data_config, max_new_tokens=3, stop_tokens=(), stop_strings=())
    greedy = generate(model, conv, doc["image"], config)[0].tokens
    logits, state, _ = prefill_conversation(model, conv, [doc["image"]])
    other = greedy[:-1] + [(greedy[-1] + 1) % model.lm.vocab_size]
    scores, flags = plugin._score(logits, state, [greedy, other, greedy[:1]])
    assert flags == [True, False, True] and scores[0] > scores[1]


def test_unsupported_multi_round_says_so(plugin):
    with pytest.raises(NotImplementedError, match="multi_round"):
        plugin.generate_until_multi_round([])


TASK = """\
task: rwkvblocks_local_colour
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: answer
generation_kwargs:
  max_new_tokens: 3
  temperature: 0
  do_sample: false
process_results: !function utils.process_results
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""

UTILS = """\
from PIL import Image


def doc_to_visual(doc):
    return [Image.open(doc["image_path"]).convert("RGB")]


def doc_to_text(doc):
    return doc["question"] + "\\nAnswer the question using a single word or phrase."


def process_results(doc, results):
    return {"exact_match": float(results[0].strip().lower() == doc["answer"].lower())}
"""

RUN = """\
import json
import lmms_eval.evaluator as evaluator
from lmms_eval.tasks import TaskManager

try:
    import filelock._api  # noqa: F401
except ImportError:  # lmms-eval 0.7.3 patches filelock < 4 internals; with filelock 4 skip that patch
    evaluator._enable_reentrant_filelocks._patched = True
manager = TaskManager(include_path={tasks!r}, include_defaults=False)
out = evaluator.simple_evaluate(
    model="rwkvblocks", model_args="pretrained=visualrwkv_base_tiny,batch_size=2", tasks=["rwkvblocks_local_colour"],
    task_manager=manager, bootstrap_iters=0, log_samples=False,
)
print("RESULT " + json.dumps(out["results"]["rwkvblocks_local_colour"], default=str))
"""


@pytest.mark.slow
def test_lmms_eval_runs_a_local_task_with_the_plugin(tmp_path):
    """lmms-eval's own evaluator, the model found by name through the entry point, a local JSON task, no network.

    (Only a generate_until task: lmms-eval 0.7.3's evaluator turns loglikelihood tuples into strings
    (``unwrap_generation_output``), so its multiple_choice tasks fail for every model; the method itself is
    tested above.)"""
    rows = []
    for i, colour in enumerate(COLOURS):
        Image.new("RGB", (60, 50), colour).save(tmp_path / f"{i}.png")
        rows.append({"question": "What colour?", "answer": colour, "image_path": str(tmp_path / f"{i}.png")})
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "colour.yaml").write_text(TASK.format(data=tmp_path / "data.jsonl"))
    (tasks / "utils.py").write_text(UTILS)
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env["HF_HOME"] = str(tmp_path / "hf")  # the datasets cache of this run only
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(RUN.format(tasks=str(tasks)))],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    result = json.loads(line[len("RESULT ") :])
    assert 0.0 <= result["exact_match,none"] <= 1.0
