"""One command-line grammar: `-c CONFIG` and `--set` wherever config is read, `RUN` wherever a run is read,
flags that mean one thing, old spellings that still work for a release with one warning line, and a bare
`pretrainlab quickstart` that runs the documented recipe."""

import argparse
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from pretrainlab.cli import build_parser, main
from pretrainlab.cliargs import config_from_args, scalar_kind
from pretrainlab.config import ProjectConfig, load_config
from pretrainlab.errors import UserError
from test_cli import leaf_commands

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
READS_A_RUN = {"eval", "export", "report", "gates check", "mm eval"}


def options(parser: argparse.ArgumentParser) -> set[str]:
    return {o for a in parser._actions if a.help != argparse.SUPPRESS for o in a.option_strings}


def positional_metavars(parser: argparse.ArgumentParser) -> list[str]:
    return [a.metavar for a in parser._actions if not a.option_strings and a.help != argparse.SUPPRESS]


def test_every_command_that_reads_config_takes_c_and_set():
    for path, parser in leaf_commands():
        if path == ("config", "docs"):  # prints the reference of every option; reads none
            continue
        assert {"-c", "--config", "--set", "--workdir"} <= options(parser), " ".join(path)


def test_every_command_that_reads_a_run_takes_it_as_RUN():
    found = {" ".join(path): parser for path, parser in leaf_commands()}
    for command in READS_A_RUN:
        assert positional_metavars(found[command]) == ["RUN"], command


def test_no_generated_flag_means_two_different_things():
    kinds: dict[str, set] = {}
    for _, parser in leaf_commands():
        for action in parser._actions:
            if action.dest.startswith("cfg__") and action.help != argparse.SUPPRESS:
                _, section, name = action.dest.split("__", 2)
                model = ProjectConfig.model_fields[section].annotation
                kind = scalar_kind(model.model_fields[name].annotation)
                kind = "number" if kind in (int, float) else str(kind)
                for flag in action.option_strings:
                    kinds.setdefault(flag, set()).add(kind)
    assert {flag: k for flag, k in kinds.items() if len(k) > 1} == {}
    assert kinds["--tokens-dir"] == {str(Path)} and kinds["--tokens"] == {"number"}  # train's folder, plan's count
    assert kinds["--parallel-runs"] == {"number"} and kinds["--parallel"] == {"literal"}


def test_each_experiments_command_lists_only_its_own_flags():
    found = {" ".join(path): options(parser) for path, parser in leaf_commands()}
    accidents, sweep, lr_range = found["experiments accidents"], found["experiments sweep"], found["experiments lr-range"]
    assert "--lr-multiplier" in accidents and not {"--lr-min", "--lr-steps", "--metric", "--seed-repeats", "--grid"} & accidents
    assert {"--metric", "--grid", "--parallel-runs"} <= sweep and not {"--lr-min", "--accidents"} & sweep
    assert {"--lr-min", "--lr-max"} <= lr_range and not {"--accidents", "--metric", "--parallel-runs"} & lr_range


def parse(*argv):
    return build_parser().parse_args(list(argv))


def one_warning(capsys, *fragments):
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("warning: ") and "deprecated" in lines[0], lines
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.mark.parametrize("command", [["train"], ["plan"], ["experiments", "lr-range"], ["sweep"]])
def test_the_old_positional_config_still_works_with_a_warning(command, capsys):
    new = config_from_args(parse(*command, "-c", str(QUICKSTART)))
    assert capsys.readouterr().err == ""
    old = config_from_args(parse(*command, str(QUICKSTART)))
    assert old == new and new.train.steps == 200
    one_warning(capsys, f"-c {QUICKSTART}")


def test_accidents_base_is_the_old_spelling_of_c(capsys):
    cfg = config_from_args(parse("experiments", "accidents", "--base", str(QUICKSTART)))
    assert cfg == load_config(str(QUICKSTART), [])
    one_warning(capsys, "--base", "-c")


def test_renamed_flags_keep_their_old_spelling_for_a_release(capsys, tmp_path):
    cfg = config_from_args(parse("train", "--tokens", str(tmp_path)))
    assert cfg.train.tokens == tmp_path
    one_warning(capsys, "train --tokens", "--tokens-dir")
    assert config_from_args(parse("experiments", "sweep", "--parallel", "2")).experiments.parallel == 2
    one_warning(capsys, "--parallel", "--parallel-runs")
    assert config_from_args(parse("experiments", "sweep", "--parallel-runs", "3")).experiments.parallel == 3


def test_config_given_twice_is_one_clear_error():
    with pytest.raises(UserError, match="config given twice"):
        config_from_args(parse("train", str(QUICKSTART), "-c", str(QUICKSTART)))


@pytest.fixture
def exported(monkeypatch):
    import pretrainlab.export.package as package

    calls = []
    monkeypatch.setattr(package, "export_run", lambda run, out, overrides, checkpoint: calls.append(
        (str(run), out, overrides)) or {"out": out})
    return calls


def test_export_writes_RUN_to_out_and_the_old_forms_still_work(exported, capsys):
    assert main(["export", "r", "--out", "o", "--dtype", "bfloat16"]) == 0
    assert exported[-1] == ("r", "o", ["export.dtype=bfloat16"])
    assert "warning" not in capsys.readouterr().err
    assert main(["export", "r", "o2"]) == 0 and exported[-1][1] == "o2"
    one_warning(capsys, "export RUN o2", "--out o2")
    assert main(["export", "r", "--to", "hf", "o3"]) == 0 and exported[-1][1] == "o3"
    one_warning(capsys, "--to hf o3", "--out o3")
    assert main(["export", "r", "--out", "a", "--to", "hf", "b"]) == 2
    assert "output folder given twice" in capsys.readouterr().err


def test_gates_check_and_dashboard_default_to_the_configs_run(monkeypatch, tmp_path):
    import pretrainlab.gates as gates
    import pretrainlab.monitor.dashboard as dashboard

    seen = {}
    monkeypatch.setattr(gates, "check_gates", lambda run, file, out=None: seen.setdefault("gates", run) and {"verdict": "Go"})
    monkeypatch.setattr(gates, "print_verdict", lambda verdict: None)
    monkeypatch.setattr(dashboard, "serve_dashboard", lambda root, **kw: seen.setdefault("dashboard", root))
    assert main(["gates", "check", "--workdir", str(tmp_path), "--set", "run.name=r7", "--gates", "g.yaml"]) == 0
    assert main(["dashboard", "--workdir", str(tmp_path)]) == 0
    assert seen == {"gates": tmp_path / "runs" / "r7", "dashboard": tmp_path / "runs"}


def test_bare_quickstart_runs_the_documented_recipe_from_any_directory(monkeypatch, tmp_path):
    import pretrainlab.quickstart as quickstart

    seen = []
    monkeypatch.setattr(quickstart, "run_quickstart", lambda cfg, resume="auto": seen.append(cfg))
    monkeypatch.chdir(tmp_path)  # no configs/ here: the recipe comes from inside the package
    assert main(["quickstart"]) == 0
    assert seen[0] == load_config(str(QUICKSTART), []) and seen[0].train.steps == 200
    assert main(["quickstart", "--set", "train.steps=7"]) == 0 and seen[1].train.steps == 7


def test_the_packaged_quickstart_recipe_is_the_repos_copy():
    packaged = ROOT / "src" / "pretrainlab" / "configs" / "quickstart.yaml"
    assert packaged.read_bytes() == QUICKSTART.read_bytes(), "copy configs/quickstart.yaml to src/pretrainlab/configs/"


@pytest.mark.slow
def test_a_built_wheel_ships_the_quickstart_recipe(tmp_path):
    src = tmp_path / "checkout"  # a copy, so the build writes nothing into the working tree
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("pretrainlab-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        assert zf.read("pretrainlab/configs/quickstart.yaml") == QUICKSTART.read_bytes()
        zf.extractall(tmp_path / "site")
    # installed (unpacked) where no configs/ is near: the bare quickstart's recipe resolves inside the package
    code = ("import pretrainlab, pretrainlab.cliargs as a; from pretrainlab.config import load_config; "
            "p = a.packaged_recipe(a.PACKAGED_QUICKSTART); print(pretrainlab.__file__); print(p); "
            "print(load_config(str(p), []).train.steps)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         env={"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin"})
    package, recipe, steps = out.stdout.split()
    assert package.startswith(str(tmp_path / "site")) and recipe.startswith(str(tmp_path / "site")) and steps == "200"
