"""Config: typed, strict, overridable, self-documenting."""

import pytest

from pretrainlab.config import ProjectConfig, config_reference_markdown, dump_yaml, load_config
from pretrainlab.errors import ConfigError


def test_defaults_validate_and_paths_derive_from_workdir(tmp_path):
    cfg = load_config(None, [f"workdir={tmp_path}"])
    assert cfg.clean_dir == tmp_path / "clean"
    assert cfg.tokens_dir == tmp_path / "tokens"
    assert cfg.run_dir == tmp_path / "runs" / "quickstart"


def test_set_overrides_parse_yaml_scalars():
    cfg = load_config(None, ["optim.lr=3e-4", "train.steps=7", "log.tensorboard=false", "eval.prompts=[a, b]"])
    assert cfg.optim.lr == pytest.approx(3e-4)
    assert cfg.train.steps == 7
    assert cfg.log.tensorboard is False
    assert cfg.eval.prompts == ["a", "b"]


def test_misspelled_key_is_rejected_with_a_hint(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lrate: 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown key 'optim.lrate'; did you mean 'optim.lr'"):
        load_config(path)


def test_unknown_section_is_rejected():
    with pytest.raises(ConfigError, match="unknown key 'trian'; did you mean 'train'"):
        load_config(None, ["trian.steps=3"])


def test_wrong_type_names_the_key():
    with pytest.raises(ConfigError, match=r"'train.steps'.*got 'many'"):
        load_config(None, ["train.steps=many"])


def test_bad_yaml_names_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  steps: [1, 2\n")
    with pytest.raises(ConfigError, match="YAML syntax error at line"):
        load_config(path)


def test_missing_file_says_so(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_cross_field_rules_are_checked():
    with pytest.raises(ConfigError, match="must be a multiple of micro_batch"):
        load_config(None, ["train.global_batch_tokens=1000"])
    with pytest.raises(ConfigError, match="divisible by n_kv_heads"):
        load_config(None, ["model.n_heads=4", "model.n_kv_heads=3"])


def test_resolved_config_round_trips_through_yaml(tmp_path):
    cfg = load_config(None, ["optim.lr=5e-4", "model.vocab_size=512"])
    path = tmp_path / "config.yaml"
    path.write_text(dump_yaml(cfg))
    assert load_config(path) == cfg


def test_reference_docs_cover_every_field():
    text = config_reference_markdown()
    for section, field in ProjectConfig.model_fields.items():
        sub = getattr(field.annotation, "model_fields", {})
        for key in sub:
            assert f"`{section}.{key}`" in text


def test_shipped_recipes_validate():
    from pathlib import Path

    for path in sorted((Path(__file__).parents[1] / "configs").glob("*.yaml")):
        load_config(path)


def test_a_run_config_with_options_this_version_lacks_still_loads_with_a_warning(tmp_path, capsys):
    from pretrainlab.config import load_run_config

    data = load_config(None, ["optim.lr=5e-4"]).model_dump(mode="json")
    data["train"]["source_weights"] = {"a": 1.0}  # an option an older version had
    data["retired_section"] = {"x": 1}
    import yaml

    (tmp_path / "config.yaml").write_text(yaml.safe_dump(data))
    cfg = load_run_config(tmp_path, ["train.steps=9"])
    assert cfg.optim.lr == 5e-4 and cfg.train.steps == 9
    err = capsys.readouterr().err
    assert "train.source_weights" in err and "retired_section" in err
    with pytest.raises(ConfigError, match="unknown key"):
        load_run_config(tmp_path, ["train.stepz=9"])  # overrides stay strict


def test_guard_actions_accept_an_unquoted_off_from_yaml_and_set(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("guard:\n  rising_action: off\n  flat_action: off\n")  # YAML 1.1 reads `off` as false
    cfg = load_config(path, ["guard.throughput_action=off"])
    assert (cfg.guard.rising_action, cfg.guard.flat_action, cfg.guard.throughput_action) == ("off", "off", "off")
    with pytest.raises(ConfigError, match=r"'guard.flat_action'.*'pause', 'alert' or 'off'"):
        load_config(None, ["guard.flat_action=on"])  # true is not an action


def test_stop_signals_are_normalized_and_uncatchable_ones_refused():
    assert load_config(None, ["train.stop_signals=[term, SIGUSR2]"]).train.stop_signals == ["SIGTERM", "SIGUSR2"]
    with pytest.raises(ConfigError, match=r"'train.stop_signals': 'SIGKILL' is not a signal that can be caught"):
        load_config(None, ["train.stop_signals=[SIGKILL]"])
