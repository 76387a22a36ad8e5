"""`corpus build`: the embedded corpus made from text already on this machine."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import yaml

from pretrainlab.config import SOURCE_NAMES, load_config
from pretrainlab.corpus.embedded import (
    SOURCES,
    build_corpus,
    default_roots,
    man_family,
    module_docstrings,
    sample_order,
    stdlib_files,
)

HAS_GROFF = shutil.which("groff") is not None


def _cfg(tmp_path: Path, *overrides: str):
    return load_config(None, [f"workdir={tmp_path}", *overrides])


def _available_here() -> set[str]:
    roots = default_roots()
    return {n for n in SOURCE_NAMES if SOURCES[n].unavailable(roots[n]) is None and SOURCES[n].candidates(roots[n])}


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_build_with_small_cap_writes_every_available_source_registry_and_manifest(tmp_path):
    cfg = _cfg(tmp_path, "corpus.max_docs_per_source=3")
    summary = build_corpus(cfg)
    raw = tmp_path / "raw"
    present = _available_here()
    assert {"stdlib_code", "stdlib_docstrings"} <= present  # the running interpreter always has a stdlib
    assert set(summary["sources"]) == present

    registry = yaml.safe_load((raw / "sources.yaml").read_text())["sources"]
    assert set(registry) == present
    for name in present:
        spec = registry[name]
        assert spec["path"] == f"{name}.jsonl" and spec["format"] == "jsonl" and spec["text_field"] == "text"
        assert spec["approval"]["status"] == "approved" and spec["approval"]["by"] == "pretrainlab corpus build"
        assert spec["modality"] == "text" and spec["pii_policy"] == "keep" and spec["license"]
        recs = _records(raw / spec["path"])
        assert 1 <= len(recs) <= 3
        for r in recs:
            assert set(r) == {"id", "text", "source", "meta"}
            assert r["source"] == name and r["id"].startswith(f"{name}:") and r["text"].strip()
            assert "path" in r["meta"]
    assert registry["stdlib_code"]["license"] == "PSF-2.0"

    manifest = json.loads((raw / "manifest.json").read_text())
    assert manifest["kind"] == "embedded_corpus" and manifest["code_version"]
    assert manifest["config"]["max_docs_per_source"] == 3
    assert manifest["totals"]["docs"] == sum(s["docs"] for s in summary["sources"].values())
    first = manifest["inputs"][0]
    assert hashlib.sha256(Path(first["path"]).read_bytes()).hexdigest() == first["sha256"]


def test_a_missing_source_root_is_skipped_with_a_note_not_an_error(tmp_path, capsys):
    cfg = _cfg(tmp_path, "corpus.sources=[stdlib_code, man_pages]", "corpus.max_docs_per_source=2")
    summary = build_corpus(cfg, roots={"man_pages": tmp_path / "no_such_man_dir"})
    assert "man_pages" in summary["skipped_sources"] and "stdlib_code" in summary["sources"]
    assert "skipping source man_pages" in capsys.readouterr().err
    assert not (tmp_path / "raw" / "man_pages.jsonl").exists()
    registry = yaml.safe_load((tmp_path / "raw" / "sources.yaml").read_text())["sources"]
    assert list(registry) == ["stdlib_code"]


def test_capped_sampling_is_deterministic_and_follows_the_seed(tmp_path):
    ids = []
    for run, seed in [("a", 0), ("b", 0), ("c", 1)]:
        cfg = _cfg(tmp_path / run, "corpus.sources=[stdlib_code]", "corpus.max_docs_per_source=5", f"corpus.seed={seed}")
        build_corpus(cfg)
        ids.append([r["id"] for r in _records(tmp_path / run / "raw" / "stdlib_code.jsonl")])
    assert ids[0] == ids[1]
    assert ids[0] != ids[2]


def test_sample_order_interleaves_families_so_one_family_cannot_crowd_a_cap():
    paths = [Path(f"man1/gcloud_cmd{i}.1.gz") for i in range(50)] + [Path("man1/ls.1.gz"), Path("man1/cp.1.gz")]
    order = sample_order(paths, "0:man_pages", man_family)
    assert sorted(order) == sorted(paths)
    assert {p.name for p in order[:3]} >= {"ls.1.gz", "cp.1.gz"}
    assert order == sample_order(list(reversed(paths)), "0:man_pages", man_family)


def test_stdlib_files_exclude_tests_and_third_party_packages(tmp_path):
    for rel in ["ok.py", "pkg/mod.py", "test/x.py", "pkg/tests/y.py", "idlelib/idle_test/z.py",
                "pkg/test_a.py", "site-packages/b.py", "lib2to3/tests/data/bad.py", "notes.txt"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x = 1\n")
    assert [p.relative_to(tmp_path).as_posix() for p in stdlib_files(tmp_path)] == ["ok.py", "pkg/mod.py"]


def test_docstrings_are_extracted_with_qualified_names_and_cleaned():
    src = '''"""Module doc."""
class A:
    """Class doc.

        Indented detail.
    """
    def f(self):
        """Method doc."""
if True:
    def g():
        """Nested in an if."""
def h():
    pass
'''
    docs = module_docstrings(src, "pkg.mod")
    assert docs == [
        ("pkg.mod", "Module doc."),
        ("pkg.mod.A", "Class doc.\n\nIndented detail."),
        ("pkg.mod.A.f", "Method doc."),
        ("pkg.mod.g", "Nested in an if."),
    ]


def test_share_doc_decodes_gz_and_counts_binary_and_non_utf8_files(tmp_path):
    root = tmp_path / "doc"
    for pkg in ("a", "b", "c", "d", "e"):
        (root / pkg).mkdir(parents=True)
    (root / "a" / "README").write_text("Package a readme.\n")
    (root / "b" / "copyright").write_text("Copyright text.\n")
    (root / "c" / "README.gz").write_bytes(gzip.compress(b"Compressed readme.\n"))
    (root / "d" / "README").write_bytes(b"\x7fELF\x00\x01binary")
    (root / "e" / "README").write_bytes("caf\xe9".encode("latin-1"))
    (root / "e" / "changelog").write_text("not collected")
    cfg = _cfg(tmp_path, "corpus.sources=[share_doc]")
    summary = build_corpus(cfg, roots={"share_doc": root})
    recs = {r["id"]: r for r in _records(tmp_path / "raw" / "share_doc.jsonl")}
    assert set(recs) == {"share_doc:a/README", "share_doc:c/README", "share_doc:b/copyright"}
    assert recs["share_doc:c/README"]["text"] == "Compressed readme.\n"
    assert summary["sources"]["share_doc"]["docs"] == 3
    manifest = json.loads((tmp_path / "raw" / "manifest.json").read_text())
    assert manifest["sources"]["share_doc"]["skipped_files"] == {"binary": 1, "non_utf8": 1}


@pytest.mark.skipif(not HAS_GROFF, reason="groff not installed")
def test_man_pages_render_english_sections_only_and_skip_aliases(tmp_path):
    root = tmp_path / "man"
    page = b'.TH FOO 1\n.SH NAME\nfoo \\- do foo things\n.SH DESCRIPTION\n\\fBfoo\\fR frobs the widget.\n'
    (root / "man1").mkdir(parents=True)
    (root / "man1" / "foo.1.gz").write_bytes(gzip.compress(page))
    (root / "man1" / "bar.1").write_bytes(b".so man1/foo.1\n")
    (root / "de" / "man1").mkdir(parents=True)
    (root / "de" / "man1" / "foo.1").write_bytes(page)
    cfg = _cfg(tmp_path, "corpus.sources=[man_pages]")
    build_corpus(cfg, roots={"man_pages": root})
    recs = _records(tmp_path / "raw" / "man_pages.jsonl")
    assert [r["id"] for r in recs] == ["man_pages:man1/foo.1"]
    text = recs[0]["text"]
    assert "foo frobs the widget." in text and "\b" not in text and "\x1b" not in text
    manifest = json.loads((tmp_path / "raw" / "manifest.json").read_text())
    assert manifest["sources"]["man_pages"]["skipped_files"] == {"alias": 1}
