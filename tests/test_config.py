"""Configs are checked once, when they are built: every field's type, range and allowed values, named."""
import dataclasses

import pytest
import yaml
from click.testing import CliRunner

from bench.cli import main
from lightgen.config import PRESETS, RULES, LightGenConfig
from lightgen.errors import InputError
from lightgen.train import TRAIN_RULES, TrainConfig
from lightgen.unet_student import UNET_RULES, UNetStudentConfig

TINY = dict(width=32, num_heads=2, encoder_depth=1, decoder_depth=1, cross_depth=1, text_depth=1)


@pytest.mark.parametrize("cls, rules", [(LightGenConfig, RULES), (TrainConfig, TRAIN_RULES),
                                        (UNetStudentConfig, UNET_RULES)])
def test_every_field_has_a_rule(cls, rules):
    """A new config field needs its entry in the rules table (lightgen/config.py, train.py, unet_student.py)."""
    assert set(rules) == {f.name for f in dataclasses.fields(cls)}


def test_presets_and_defaults_pass_their_own_rules_unchanged():
    for name, fields in PRESETS.items():
        config = LightGenConfig.from_preset(name)
        assert {k: getattr(config, k) for k in fields} == fields
    assert TrainConfig().model_config() == LightGenConfig.from_preset("testbed") and UNetStudentConfig()


@pytest.mark.parametrize("change, message", [
    ({"prediction": "x"}, "prediction: expected one of 'epsilon', 'v', got 'x'"),
    ({"pos_init": "rope"}, "pos_init: expected one of 'normal', 'sincos', got 'rope'"),
    ({"codec": "nope"}, "codec: expected one of 'vae', 'pixel', got 'nope'"),
    ({"width": 128, "num_heads": 5}, "num_heads: expected a divisor of width 128, got 5"),
    ({"width": -8}, "width: expected an integer >= 1, got -8"),
    ({"num_heads": "abc"}, "num_heads: expected an integer >= 1, got 'abc'"),
    ({"encoder_depth": 2.0}, "encoder_depth: expected an integer >= 1, got 2.0"),
    ({"text_drop_prob": float("nan")}, "text_drop_prob: expected a finite number >= 0 and <= 1, got nan"),
    ({"attn_dropout": 1.0}, "attn_dropout: expected a finite number >= 0 and < 1, got 1.0"),
    ({"rel_pos_bias": "yes"}, "rel_pos_bias: expected true or false, got 'yes'"),
    ({"resolution": 30}, "resolution: expected a multiple of vae_stride×patch_size = 4, got 30"),
    ({"text_vocab": ["a", 3]}, r"text_vocab: expected a list, each a string or null, got \['a', 3\]"),
    ({"bogus_field": 1}, r"model: unknown key\(s\) \['bogus_field'\]"),
])
def test_bad_model_fields_are_named(change, message):
    with pytest.raises(InputError, match=f"^{message}"):
        LightGenConfig.from_preset("testbed", **change)


@pytest.mark.parametrize("change, message", [
    ({"save_every": 0}, "save_every: expected an integer >= 1, got 0"),
    ({"keep_last": 0}, "keep_last: expected an integer >= 1, got 0"),
    ({"lr": float("nan")}, "lr: expected a finite number >= 0 or null, got nan"),
    ({"lr": "nan"}, "lr: expected a finite number >= 0 or null, got 'nan'"),
    ({"batch_size": "abc"}, "batch_size: expected an integer >= 1, got 'abc'"),
    ({"steps": True}, "steps: expected an integer >= 1, got True"),
    ({"betas": [0.9]}, r"betas: expected two numbers >= 0 and < 1, got \[0.9\]"),
    ({"mixed_precision": "fp8"}, "mixed_precision: expected one of 'no', 'bf16', 'fp16', 'auto', got 'fp8'"),
    ({"init_weights": "last"}, "init_weights: expected one of 'model', 'model_ema' or null, got 'last'"),
    ({"preset": "tiny"}, "preset: expected one of 'lightgen-base', "),
    ({"export_steps": [0]}, r"export_steps: expected a list, each an integer >= 1, got \[0\]"),
    ({"resolution": 30}, "resolution: expected a multiple of vae_stride×patch_size = 4 .*, got 30"),
    ({"model": {"prediction": "x"}}, "model.prediction: expected one of 'epsilon', 'v', got 'x'"),
    ({"model": {**TINY, "width": 128, "num_heads": 5}}, "model.num_heads: expected a divisor of width 128, got 5"),
    ({"model": {"bogus_field": 1}}, r"model: unknown key\(s\) \['bogus_field'\]"),
    ({"model": "testbed"}, "model: expected a mapping, got 'testbed'"),
    ({"student": "unet", "unet": {"mid_block_type": "bogus"}}, "unet.mid_block_type: expected one of "),
    ({"student": "unet", "unet": {"bogus_field": 1}}, r"unet: unknown key\(s\) \['bogus_field'\]"),
    ({"student": "unet", "unet": {"snr_gamma": 0}}, "unet.snr_gamma: expected a finite number > 0 or null, got 0"),
])
def test_bad_train_fields_are_named_with_the_file(tmp_path, change, message):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(change))
    with pytest.raises(InputError, match=f"^{path}: {message}"):
        TrainConfig.from_yaml(path)


def test_yaml_nan_and_construction_in_code_are_checked_too(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: .nan\n")  # YAML's NaN: a float, still refused
    with pytest.raises(InputError, match=f"^{path}: lr: expected a finite number"):
        TrainConfig.from_yaml(path)
    with pytest.raises(InputError, match="^keep_last: expected an integer >= 1, got 0"):
        TrainConfig(keep_last=0)


@pytest.mark.parametrize("line", ["save_every: 0", "model:\n  pos_init: rope", "model:\n  bogus_field: 1"])
def test_train_cli_refuses_a_bad_value_in_one_line_before_any_folder(tmp_path, line):
    path = tmp_path / "c.yaml"
    path.write_text(f"out: {tmp_path / 'run'}\n{line}\n")
    result = CliRunner().invoke(main, ["train", "--config", str(path), "--threads", "1"])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert [line for line in result.output.splitlines() if line.startswith("Error:")] == [
        result.output.strip().splitlines()[-1]] and f"Error: {path}: " in result.output  # one line, naming the file
    assert not (tmp_path / "run").exists()
