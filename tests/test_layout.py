"""The package's shape: imports flow one way (the import-linter contract in pyproject.toml), no private
names cross module boundaries, and the run report gets other packages' sections by registration."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "pretrainlab"


def test_imports_flow_one_way_as_the_import_linter_contract_says():
    lint = Path(sys.executable).with_name("lint-imports")
    assert lint.exists(), "lint-imports is missing: pip install -e '.[dev]' (import-linter is a dev dependency)"
    out = subprocess.run([str(lint), "--no-cache", str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout


def test_every_top_level_module_and_every_monitor_module_has_a_layer():
    import tomllib

    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = tool["contracts"][0]["layers"]
    named = {m.strip() for line in layers for part in line.split("|") for m in part.split(":")}
    top = {f"pretrainlab.{p.stem if p.is_file() else p.name}" for p in SRC.iterdir()
           if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()}
    # monitor is split between layers by module, so each of its modules must be placed explicitly
    monitor = {f"pretrainlab.monitor.{p.stem}" for p in (SRC / "monitor").glob("*.py") if p.stem != "__init__"}
    missing = sorted(m for m in top - {"pretrainlab.monitor"} if m not in named) + sorted(monitor - named)
    assert not missing, f"place these in [tool.importlinter] layers (pyproject.toml, docs/LAYERS.md): {missing}"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_module_imports_another_modules_private_names():
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        here = _module_name(path)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").startswith("pretrainlab"):
                private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                if private and node.module != here:
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {private} from {node.module}")
    assert not offenders, "\n".join(offenders)


def test_the_report_imports_no_package_above_it_and_reporting_brings_their_sections():
    code = ("import sys, pretrainlab.monitor.report as r\n"
            "from pretrainlab.monitor.rundata import report_sections\n"
            "print(sorted(m for m in sys.modules if m.startswith(('pretrainlab.eval.', 'pretrainlab.multimodal.'))\n"
            "             and not m.endswith('.config')))\n"  # ProjectConfig's sections live with their package
            "print([s.name for s in report_sections()])\n"
            "import pretrainlab.reporting\n"
            "print([s.name for s in report_sections()])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0] == "[]"
    before, after = ast.literal_eval(out[1]), ast.literal_eval(out[2])
    assert {"summary", "moe", "evaluation", "events"} <= set(before)
    assert set(after) - set(before) == {"multimodal", "evaluation across training"}
    assert after.index("moe") < after.index("multimodal") < after.index("mixture")  # page order is registration order
    assert after.index("evaluation") < after.index("evaluation across training") < after.index("metadata")


def _functions(path: Path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node.name, node.end_lineno - node.lineno + 1


def test_train_functions_fit_a_screen():
    sizes = {f"{path.relative_to(SRC)}:{name}": n
             for path in sorted((SRC / "train").rglob("*.py")) for name, n in _functions(path)}
    too_long = {k: n for k, n in sizes.items() if n >= 80}
    assert not too_long, f"functions of 80+ lines in train/: {too_long}"
    assert sizes["train/trainer.py:train"] < 40  # setup / restore / step / boundary live in their own functions


def test_the_trainer_imports_no_eval_multimodal_or_monitor_module():
    """The recipe layer (pretrainlab.recipes) hands the trainer its callbacks, sinks and validation."""
    imported = set()
    for name in ("trainer.py", "checkpointer.py", "context.py", "callbacks.py"):
        for node in ast.walk(ast.parse((SRC / "train" / name).read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported.update(a.name for a in node.names)
    bad = sorted(m for m in imported if m.startswith(("pretrainlab.eval", "pretrainlab.multimodal", "pretrainlab.monitor")))
    assert not bad, bad


def test_each_config_section_is_defined_by_the_package_it_configures():
    from pretrainlab.config import ProjectConfig, Section

    owner = {"corpus": "corpus", "data": "data", "tokenizer": "tokenizer", "tokenize": "tokenizer", "model": "model",
             "optim": "train", "train": "train", "parallel": "train", "mix": "train", "packing": "train",
             "checkpoint": "train", "guard": "train", "moe_monitor": "train", "eval": "eval", "export": "export",
             "log": "monitor", "alerts": "monitor", "hardware": "monitor", "prometheus": "monitor",
             "plan": "plan", "experiments": "experiments", "multimodal": "multimodal"}
    where = {name: f.annotation.__module__ for name, f in ProjectConfig.model_fields.items()
             if isinstance(f.annotation, type) and issubclass(f.annotation, Section) or name in owner}
    expected = {name: f"pretrainlab.{owner[name]}.config" if name in owner else "pretrainlab.config.project"
                for name in where}  # `run` (the run's name and folder) belongs to the project itself
    assert where == expected, "a new section belongs in <its package>/config.py and in the owner table here"
    assert not (SRC / "config.py").exists()
    assert sorted(p.name for p in (SRC / "config").glob("*.py")) == ["__init__.py", "loading.py", "project.py", "reference.py"]
