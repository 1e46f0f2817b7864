"""RWKV-7 (x070) language models: configuration, BlinkDL checkpoints both ways, the fla / HF key layout,
and the machinery around an LM (generation, compiled decoding, scanning and hybrid assemblies)."""

from __future__ import annotations

import pytest
import torch

from assemblies import RWKVConfig, VisualRWKV, build_rwkv_lm, create_assembly, load_blinkdl, save_blinkdl
from assemblies.models.formats.blinkdl import infer_rwkv_config, rwkv_config_of
from assemblies.models.formats.fla import blinkdl_to_fla, fla_to_blinkdl
from rwkvblocks import ChannelMix7, TimeMix7
from rwkvblocks.generation import SamplingConfig, generate_ids, step_function
from tests.blinkdl import blinkdl_state_dict
from tests.helpers import spread_weights_

RANKS = dict(decay_rank=24, a_rank=20, value_rank=12, gate_rank=40)  # no formula gives these
SMALL = dict(dim=64, num_layers=2, head_dim=16, **RANKS)


def test_config_is_inferred_from_shapes_never_from_a_formula():
    want = RWKVConfig("x070", 256, 64, 2, 16, 256, **RANKS)
    assert infer_rwkv_config(blinkdl_state_dict("x070", **SMALL)) == want
    odd = blinkdl_state_dict("x070", dim=96, num_layers=3, head_dim=32, ffn_dim=160, **RANKS)
    assert infer_rwkv_config(odd) == RWKVConfig("x070", 256, 96, 3, 32, 160, **RANKS)


def test_released_sizes():
    sizes = {name: RWKVConfig.released("x070", name) for name in ("0b1", "0b4", "1b5", "2b9")}
    got = {n: (c.num_layers, c.dim, c.decay_rank, c.a_rank, c.value_rank, c.gate_rank) for n, c in sizes.items()}
    assert got == {
        "0b1": (12, 768, 64, 64, 32, 128),
        "0b4": (24, 1024, 64, 64, 32, 160),
        "1b5": (24, 2048, 96, 96, 64, 256),
        "2b9": (32, 2560, 96, 96, 64, 320),
    }
    assert all(c.ffn_dim == 4 * c.dim and c.vocab_size == 65536 and c.head_dim == 64 for c in sizes.values())
    with torch.device("meta"):
        model = build_rwkv_lm(sizes["0b1"])
    assert 0.18e9 < sum(p.numel() for p in model.parameters()) < 0.20e9  # RWKV-7 World 0.1B: 191 M
    with pytest.raises(ValueError, match="x070: 0b1, 0b4, 1b5, 2b9"):
        RWKVConfig.released("x070", "7b")
    assert RWKVConfig.released("x060", "7b").decay_rank == 128


def test_config_validates_and_round_trips_through_json():
    cfg = RWKVConfig("x070", 100, 64, 2, 16, **RANKS)
    assert cfg.ffn_dim == 256 and "decay/a/value/gate LoRA 24/20/12/40" in cfg.describe()
    assert RWKVConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="'x052', 'x060', 'x070'"):
        RWKVConfig("x080")
    with pytest.raises(ValueError, match="gate_rank must be positive"):
        RWKVConfig("x070", gate_rank=0)


def test_build_gives_an_x070_stack():
    model = build_rwkv_lm(RWKVConfig("x070", 100, 64, 2, 16, **RANKS))
    assert all(isinstance(b.att, TimeMix7) and isinstance(b.ffn, ChannelMix7) for b in model.blocks)
    assert model.blocks[0].att.v0 is None and model.blocks[1].att.v2.shape == (12, 64)
    assert rwkv_config_of(model) == RWKVConfig("x070", 100, 64, 2, 16, **RANKS)
    logits, state = model(torch.tensor([[1, 2, 3]]))
    assert logits.shape == (1, 3, 100) and state.wkv(1).shape == (1, 4, 16, 16)


@pytest.mark.parametrize("layer0_value_lora", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_load_then_save_reproduces_the_file(tmp_path, layer0_value_lora, dtype):
    original = blinkdl_state_dict("x070", **SMALL, layer0_value_lora=layer0_value_lora, dtype=dtype)
    src, dst = tmp_path / "in.pth", tmp_path / "out.pth"
    torch.save(original, src)
    model = load_blinkdl(src)
    assert model.emb.weight.dtype == dtype and not model.training
    save_blinkdl(model, dst)
    again = torch.load(dst, weights_only=True)
    unused = {"blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2"}
    assert set(again) == set(original) - unused  # layer 0's unused value LoRA is dropped
    assert unused <= set(original) if layer0_value_lora else not unused & set(original)
    for key, tensor in again.items():
        assert tensor.dtype == dtype and torch.equal(tensor, original[key]), key


def test_one_layer_model_round_trips(tmp_path):
    path = tmp_path / "one.pth"
    torch.save(blinkdl_state_dict("x070", dim=32, num_layers=1, head_dim=16, **RANKS), path)
    model = load_blinkdl(path)
    assert len(model.blocks) == 1 and model.blocks[0].att.v0 is None
    save_blinkdl(model, tmp_path / "again.pth")
    assert infer_rwkv_config(torch.load(tmp_path / "again.pth", weights_only=True)).num_layers == 1


def test_key_problems_are_all_named_in_one_error(tmp_path):
    sd = blinkdl_state_dict("x070", **SMALL)
    del sd["blocks.1.att.v1"]
    sd["blocks.1.ffn.s_emb.weight"] = torch.zeros(256, 32)  # a DeepEmbed variant is not x070
    sd["blocks.1.att.g2"] = torch.zeros(41, 64)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(ValueError) as err:
        load_blinkdl(path)
    msg = str(err.value)
    assert "missing (1): blocks.1.att.v1" in msg
    assert "unexpected (1): blocks.1.ffn.s_emb.weight" in msg
    assert "mis-shaped (1): blocks.1.att.g2: expected [40, 64], got [41, 64]" in msg
    del sd["blocks.0.att.g1"]
    torch.save(sd, path)
    with pytest.raises(ValueError, match="x070 checkpoint .*missing or malformed: blocks.0.att.g1"):
        load_blinkdl(path)


def test_fla_layout_names_and_shapes():
    """fla's ``RWKV7ForCausalLM`` names (fla/models/rwkv7, fla/layers/rwkv7.py) and its parameter shapes."""
    fla = blinkdl_to_fla(blinkdl_state_dict("x070", **SMALL, layer0_value_lora=True))
    C, F, H, K = 64, 256, 4, 16
    want = {"model.embeddings.weight": (256, C), "lm_head.weight": (256, C)}
    want |= {"model.norm.weight": (C,), "model.norm.bias": (C,)}
    want |= {"model.layers.0.pre_norm.weight": (C,), "model.layers.0.pre_norm.bias": (C,)}
    for i in range(2):
        p = f"model.layers.{i}."
        want |= {p + f"{n}.{t}": (C,) for n in ("attn_norm", "ffn_norm", "attn.g_norm") for t in ("weight", "bias")}
        want |= {p + f"attn.x_{n}": (1, 1, C) for n in "rwkvag"}
        want |= {p + "attn.k_k": (C,), p + "attn.k_a": (C,), p + "attn.r_k": (H, K)}
        want |= {p + f"attn.{n}_proj.weight": (C, C) for n in "rkvo"}
        loras = {"w": 24, "a": 20, "g": 40} | ({"v": 12} if i else {})
        for n, rank in loras.items():
            want |= {p + f"attn.{n}_lora.lora.0.weight": (rank, C), p + f"attn.{n}_lora.lora.2.weight": (C, rank)}
            if n != "g":
                want[p + f"attn.{n}_lora.lora.2.bias"] = (C,)
        want |= {p + "ffn.x_k": (C,), p + "ffn.key.weight": (F, C), p + "ffn.value.weight": (C, F)}
    assert {k: tuple(v.shape) for k, v in fla.items()} == want


def test_fla_round_trip_is_exact_and_loads(tmp_path):
    original = blinkdl_state_dict("x070", **SMALL)
    fla = blinkdl_to_fla(original)
    sd = original["blocks.1.att.w1"]
    torch.testing.assert_close(fla["model.layers.1.attn.w_lora.lora.0.weight"], sd.t(), rtol=0, atol=0)
    torch.testing.assert_close(fla["model.layers.1.attn.w_lora.lora.2.bias"], original["blocks.1.att.w0"].flatten())
    back = fla_to_blinkdl(fla)
    assert set(back) == set(original)
    for key, tensor in original.items():
        assert back[key].shape == tensor.shape and torch.equal(back[key], tensor), key
    torch.save(back, tmp_path / "back.pth")
    assert isinstance(load_blinkdl(tmp_path / "back.pth").blocks[1].att, TimeMix7)
    with pytest.raises(ValueError, match="'model.layers.0.attn.x_x' has no BlinkDL x070 counterpart"):
        fla_to_blinkdl({**fla, "model.layers.0.attn.x_x": torch.zeros(6, 64)})
    with pytest.raises(ValueError, match="'blocks.0.att.time_faaaa' is not a BlinkDL x070 key"):
        blinkdl_to_fla({"blocks.0.att.time_faaaa": torch.zeros(4, 16)})


def _small_lm():
    torch.manual_seed(0)
    config = RWKVConfig("x070", 50, 32, 2, 16, decay_rank=8, a_rank=6, value_rank=4, gate_rank=10)
    return spread_weights_(build_rwkv_lm(config)).eval()


def test_generation_decodes_as_a_step_by_step_argmax():
    lm = _small_lm()
    prompts = [[1, 2, 3, 4, 5], [6, 7]]  # different lengths: prefilled in separate groups, never padded
    results = generate_ids(lm, prompts, SamplingConfig(max_new_tokens=4, stop_tokens=()))
    for prompt, result in zip(prompts, results):
        want = []
        with torch.no_grad():
            logits, state = lm(torch.tensor([prompt]))
            for _ in range(4):
                want.append(int(logits[0, -1].argmax()))
                logits, state = lm(torch.tensor([[want[-1]]]), state)
        assert result.tokens == want and result.finish_reason == "length"


@pytest.mark.slow  # torch.compile of the decode step: ~40 s on two busy cores
def test_compiled_decode_step_matches_eager():
    lm = _small_lm()
    step = step_function(lm, compile=True)
    with torch.no_grad():
        _, state = lm(torch.tensor([[1, 2, 3]]))
        compiled, compiled_state = step(torch.tensor([[4]]), state)
        eager, eager_state = lm(torch.tensor([[4]]), state)
    torch.testing.assert_close(compiled, eager)
    torch.testing.assert_close(compiled_state.wkv(1), eager_state.wkv(1))


@pytest.mark.parametrize("preset", ["visualrwkv_tiny", "visualrwkv_hybrid_tiny"])
def test_visual_assemblies_take_an_x070_language_model(preset, tmp_path):
    """Scanning (bidirectional in visualrwkv_tiny), the hybrid TinyAttention layer and our directory format."""
    lm = {"version": "x070", "decay_rank": 8, "a_rank": 6, "value_rank": 4, "gate_rank": 10}
    torch.manual_seed(0)
    model = create_assembly(preset, lm=lm).eval()
    spread_weights_(model.lm)
    assert isinstance(model.lm.blocks[1].att, TimeMix7)
    images = torch.rand(1, 3, 56, 56)
    n = model.image_tokens
    tokens = torch.randint(0, 257, (1, n + 6), generator=torch.Generator().manual_seed(1))
    spans = torch.tensor([[0, 2, 0, n]])  # sample, start, first image token, length
    with torch.no_grad():
        out = model(tokens, images=images, image_spans=spans)
    assert torch.isfinite(out.logits).all() and out.logits.abs().max() > 0.1
    model.save_pretrained(tmp_path / "m")
    again = VisualRWKV.from_pretrained(tmp_path / "m").eval()
    assert again.config.lm == model.config.lm
    with torch.no_grad():
        torch.testing.assert_close(again(tokens, images=images, image_spans=spans).logits, out.logits)
