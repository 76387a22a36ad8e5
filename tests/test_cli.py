"""The command line: helpful help, and one clear line (exit 2, no traceback) for user mistakes."""

import subprocess
import sys

import pytest


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "pretrainlab.cli", *args], capture_output=True, text=True, cwd=cwd)


def leaf_commands(parser=None, path=()):
    """Every runnable command (a parser with no further subcommands) as its argv prefix and parser."""
    import argparse

    from pretrainlab.cli import build_parser

    parser = parser or build_parser()
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
        return
    for name, sp in subs[0].choices.items():
        yield from leaf_commands(sp, path + (name,))


LEAVES = [" ".join(path) for path, _ in leaf_commands()]


def test_the_top_level_help_explains_itself():
    out = run_cli("--help")
    assert out.returncode == 0
    assert "usage: pretrainlab" in out.stdout and "Start with" in out.stdout


@pytest.mark.parametrize("command", LEAVES)
def test_every_leaf_command_explains_itself(command, capsys):
    from pretrainlab.cli import main

    with pytest.raises(SystemExit) as done:
        main([*command.split(), "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: pretrainlab {command}") and len(text) > 200


def test_help_lists_commands_in_the_order_the_program_runs_them():
    out = run_cli("--help").stdout
    listed = [line.split()[0] for line in out.split("COMMAND\n", 1)[1].split("options:")[0].splitlines()
              if line.startswith("    ") and not line.startswith("     ")]
    assert listed == ["quickstart", "plan", "corpus", "data", "tokenizer", "mm", "train", "eval", "export", "report",
                      "dashboard", "gates", "experiments", "config"]


def assert_one_line_error(out, *fragments):
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    lines = [l for l in out.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    for f in fragments:
        assert f in lines[0]


def test_missing_config_file(tmp_path):
    assert_one_line_error(run_cli("train", "-c", str(tmp_path / "nope.yaml")), "config file not found")


def test_bad_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {steps: 3\n")
    assert_one_line_error(run_cli("train", "-c", str(bad)), "YAML syntax error")


def test_unknown_key_with_hint(tmp_path):
    assert_one_line_error(run_cli("config", "show", "--set", "optim.learning_rate=1"), "unknown key", "optim.")


def test_wrong_type_from_a_derived_flag():
    assert_one_line_error(run_cli("train", "--steps", "ten"), "train.steps")


def test_non_utf8_config(tmp_path):
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("train:\n  steps: 3 # caf\xe9\n".encode("latin-1"))
    assert_one_line_error(run_cli("config", "show", "-c", str(bad)), "not UTF-8")


def test_training_without_shards_says_which_stage_to_run(tmp_path):
    out = run_cli("train", "--workdir", str(tmp_path))
    assert_one_line_error(out, "pretrainlab")


def test_eval_of_a_missing_run(tmp_path):
    assert_one_line_error(run_cli("eval", str(tmp_path / "no-such-run")))


def test_derived_flags_equal_set_overrides():
    from pretrainlab.cli import build_parser
    from pretrainlab.cliargs import config_from_args as _config_from_args

    parser = build_parser()
    a = _config_from_args(parser.parse_args(["train", "--steps", "17", "--log-every", "3", "--precision", "bf16"]))
    b = _config_from_args(
        parser.parse_args(["train", "--set", "train.steps=17", "--set", "train.log_every=3", "--set", "train.precision=bf16"])
    )
    assert a == b and a.train.steps == 17 and a.train.precision == "bf16"


def test_list_options_take_comma_separated_flags():
    from pretrainlab.cli import build_parser
    from pretrainlab.cliargs import config_from_args as _config_from_args

    parser = build_parser()
    cfg = _config_from_args(parser.parse_args(["corpus", "build", "--sources", "stdlib_code,man_pages"]))
    assert cfg.corpus.sources == ["stdlib_code", "man_pages"]
    cfg = _config_from_args(parser.parse_args(["data", "build", "--stages", "normalize, exact_dedup"]))
    assert cfg.data.stages == ["normalize", "exact_dedup"]
