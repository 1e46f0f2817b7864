"""config.json is type-checked field by field on loading: a ``ConfigError`` names the file and the dotted field."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from assemblies import create_assembly
from assemblies.models.config import DataConfig, EncoderConfig, VisualRWKVConfig
from assemblies.models.registry import get_assembly_config
from assemblies.models.rwkv_lm import RWKVConfig
from assemblies.models.visualrwkv import VisualRWKV
from rwkvblocks import CheckpointError, ConfigError


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("saved")
    create_assembly("visualrwkv_tiny").save_pretrained(root / "m", encoder_weights=False)
    return root / "m"


def _edited(saved, tmp_path, edit):
    directory = tmp_path / "m"
    shutil.copytree(saved, directory)
    path = directory / "config.json"
    raw = json.loads(path.read_text())
    edit(raw)
    path.write_text(json.dumps(raw))
    return directory, path


def _set(dotted: str, value):
    def edit(raw):
        *parents, last = dotted.split(".")
        node = raw
        for p in parents:
            node = node[p]
        node[last] = value

    return edit


def _delete(dotted: str):
    def edit(raw):
        *parents, last = dotted.split(".")
        node = raw
        for p in parents:
            node = node[p]
        del node[last]

    return edit


CASES = {
    "string_for_int": (_set("model.lm.num_layers", "2"), "model.lm.num_layers", "must be an int, got '2'"),
    "float_layer_count": (_set("model.lm.num_layers", 2.0), "model.lm.num_layers", "must be an int, got 2.0"),
    "bool_for_int": (_set("model.lm.num_layers", True), "model.lm.num_layers", "must be an int, got True"),
    "bool_for_int_in_list": (_set("model.hybrid_layers", [False]), "model.hybrid_layers.0", "must be an int"),
    "string_for_bool": (_set("data.l2wrap", "false"), "data.l2wrap", "must be a bool, got 'false'"),
    "null_for_int": (_set("model.projector_depth", None), "model.projector_depth", "must be an int, got None"),
    "list_for_object": (_set("model.encoder", ["open_clip"]), "model.encoder", "must be an object, got a list"),
    "list_for_lm": (_set("model.lm", []), "model.lm", "must be an object, got a list"),
    "object_for_list": (_set("model.hybrid_layers", {}), "model.hybrid_layers", "must be a list of ints"),
    "list_for_options": (_set("model.encoder.options", [1]), "model.encoder.options", "must be an object"),
    "bad_literal": (_set("data.prompt", "middle"), "data.prompt", "must be one of 'image_first'"),
    "bad_value": (_set("model.lm.dim", 100), "model.lm.dim", "must be a multiple of head_dim"),
    "bad_scan": (_set("model.scan", ["sideways"]), "model.scan", "must be one of"),
    "missing_model": (_delete("model"), "model", "is missing"),
    "missing_data": (_delete("data"), "data", "is missing"),
    "unknown_field": (_set("model.lm.n_embd", 64), "model.lm.n_embd", "unknown RWKVConfig fields"),
    "unknown_data_field": (_set("data.batch", 4), "data.batch", "unknown DataConfig fields"),
    "unknown_section": (_set("training", {}), "training", "is not a section"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_mistyped_config_json_is_refused_naming_the_field(saved, tmp_path, case):
    edit, field, problem = CASES[case]
    directory, path = _edited(saved, tmp_path, edit)
    before = sorted(os.listdir(directory))
    with pytest.raises(ConfigError) as info:
        VisualRWKV.from_pretrained(directory)
    err = info.value
    assert isinstance(err, ValueError)
    assert err.source == str(path) and err.field == field, (err.source, err.field)
    assert str(err).startswith(f"{path}: {field} ") and problem in str(err), str(err)
    assert sorted(os.listdir(directory)) == before  # loading writes nothing


def test_unreadable_json_and_a_non_object_are_refused(saved, tmp_path):
    directory = tmp_path / "m"
    shutil.copytree(saved, directory)
    path = directory / "config.json"
    path.write_text('{"model": {"lm": ')
    with pytest.raises(CheckpointError, match="not a JSON file") as info:
        VisualRWKV.from_pretrained(directory)
    assert info.value.path == str(path) and str(info.value).startswith(f"{path}: ")
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(CheckpointError, match="not a JSON file"):
        VisualRWKV.from_pretrained(directory)
    path.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="must be a JSON object, got list") as info:
        VisualRWKV.from_pretrained(directory)
    assert info.value.source == str(path)
    path.write_text(json.dumps({"format": "someone.else/9", "model": {}, "data": {}}))
    with pytest.raises(CheckpointError, match="format 'someone.else/9'"):
        VisualRWKV.from_pretrained(directory)


@pytest.mark.parametrize("name", ["visualrwkv_tiny", "visualrwkv_hybrid_tiny", "visualrwkv7_tiny"])
def test_to_dict_round_trips_through_json(name):
    config, data = get_assembly_config(name)
    config = config.replace(scan=("forward", "column_backward"))
    again = VisualRWKVConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config and hash(again) == hash(config)
    assert isinstance(again.scan, tuple) and isinstance(again.hybrid_layers, tuple)
    assert DataConfig.from_dict(json.loads(json.dumps(data.to_dict()))) == data
    assert RWKVConfig.from_dict(json.loads(json.dumps(config.lm.to_dict()))) == config.lm


def test_programmatic_construction_still_works():
    config = VisualRWKVConfig(lm={"version": "x052", "dim": 128, "num_layers": 2}, encoder={"cls": "first"})
    assert config.lm.num_layers == 2 and config.encoder.cls == "first"
    assert config.replace(lm={"num_layers": 3}).lm.num_layers == 3
    assert EncoderConfig(options={"vision_overrides": {"width": 64}}).options["vision_overrides"]["width"] == 64
    with pytest.raises(ConfigError, match="scan must be"):  # __post_init__ still checks values
        VisualRWKVConfig(scan="sideways")
    with pytest.raises(ConfigError) as info:  # without a file the class is the source
        VisualRWKVConfig.from_dict({"lm": {"num_layers": 1.5}})
    assert info.value.source == "VisualRWKVConfig" and info.value.field == "lm.num_layers"


def test_a_bad_concat_tower_is_named_with_its_path():
    config, _ = get_assembly_config("visualrwkv7_tiny")
    raw = config.to_dict()
    raw["encoder"]["options"]["towers"][0][1]["layer"] = "last"
    with pytest.raises(ConfigError) as info:
        VisualRWKVConfig.from_dict(raw, source="config.json", prefix="model")
    assert info.value.field == "model.encoder.options.towers.0.1.layer", info.value.field
    assert str(info.value).startswith("config.json: model.encoder.options.towers.0.1.layer must be an int")
