"""`data inspect-batch` shows the micro-batch the model sees and catches attention leaks."""

from pretrainlab.train.inspect_batch import inspect_batch

LONG_ROWS = ("train.seq_len=512", "train.global_batch_tokens=2048")  # rows long enough to hold several documents


def test_document_mask_has_no_cross_document_pairs_and_renders_html(tiny_cfg, tmp_path):
    out = tmp_path / "batch.html"
    report = inspect_batch(tiny_cfg(*LONG_ROWS), index=2, out=out)
    assert report["total_cross_document_pairs"] == 0
    assert any(r["documents"] > 1 for r in report["rows"])  # the check is not vacuous
    page = out.read_text()
    assert page.count("<svg") == len(report["rows"]) and "http://" not in page.replace('xmlns:svg="svg"', "")


def test_plain_causal_packing_is_reported_as_leaking(tiny_cfg):
    report = inspect_batch(tiny_cfg("packing.doc_mask=false", *LONG_ROWS), index=2)
    assert report["total_cross_document_pairs"] > 0


def test_best_fit_rows_show_padding_with_ignored_targets(tiny_cfg):
    report = inspect_batch(tiny_cfg("packing.mode=best_fit", "train.seq_len=32"), index=0)
    assert all(r["ignored_targets"] >= r["pad_tokens"] for r in report["rows"])
