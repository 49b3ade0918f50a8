"""`python -m t2ifast.evaluate` as a command (on tiny run folders: a few seconds) and `python -m t2ifast.info`'s
arguments: the report is merged into evaluation.json (or --out), each entry records its settings, bad arguments
are one-line errors raised before anything is loaded or computed."""

import json
import re
import sys

import pytest
import torch
from run_testing import write_run

from t2ifast import evaluate, info
from t2ifast.data import generate_synthetic, open_dataset
from t2ifast.evaluation import inception_metrics

R_PRECISION = ["--r-precision", "--r-images", "12", "--r-splits", "2", "--r-candidates", "6"]


def _make_run(tmp_path, *, synthetic):
    """A run folder of an untrained GAN-INT-CLS (tiny widths) with its DAMSM encoders: on the synthetic set
    (60 images in tmp_path/cache, the set evaluate regenerates) or on a prepared folder (no caption accuracy)."""
    from t2ifast.training.config import load_config

    cache = tmp_path / "cache"
    overrides = ["text.embedding_dim=16", "text.word_embedding_dim=8", "text.image_encoder_width=4", "gan.ngf=8",
                 "gan.ndf=8", f"train.cache_dir={cache}", "eval.classifier_steps=2"]  # fmt: skip
    if synthetic:
        folder = generate_synthetic(cache / "synthetic", 60, 64, 0)
        overrides += ["data.path=synthetic", "data.synthetic_images=60", "data.synthetic_seed=0"]
    else:
        folder = generate_synthetic(tmp_path / "data", num_images=60, size=64, workers=1)
        overrides.append(f"data.path={folder}")
    config = load_config(overrides=overrides)
    return write_run(tmp_path / "run", config, open_dataset(folder, "train").vocabulary, image_encoder=True)


@pytest.fixture
def run(tmp_path):
    return _make_run(tmp_path, synthetic=False)


def _main(capsys, *argv):
    evaluate.main([*map(str, argv), "--device", "cpu"])
    captured = capsys.readouterr()
    return json.loads(captured.out), captured.err


def test_the_report_is_merged_into_evaluation_json_with_its_settings(run, capsys):
    earlier = {"caption_accuracy": {"generated": {"overall": 0.5}, "real": {"overall": 1.0}},
               "r_precision": {"mean": 0.25, "count": 1000}, "notes": "kept"}  # fmt: skip
    (run / "evaluation.json").write_text(json.dumps(earlier))
    report, err = _main(capsys, run, *R_PRECISION, "--seed", "3")
    assert list(report) == ["r_precision"]  # stdout: this call's metrics only
    entry = report["r_precision"]
    assert entry["seed"] == 3 and entry["count"] == 12 and entry["candidates"] == 6 and entry["k"] == 1
    assert len(entry["per_split"]) == 2
    assert f"written {run / 'evaluation.json'}" in err.splitlines()
    assert "R-precision: encoding captions" in err and "R-precision: generating" in err  # the progress bars
    merged = json.loads((run / "evaluation.json").read_text())
    assert merged == {**earlier, "r_precision": entry}  # the other entries are kept as they were
    assert sorted(p.name for p in run.iterdir() if "evaluation" in p.name) == ["evaluation.json"]  # no temp file


def test_out_writes_elsewhere_and_leaves_the_run_alone(run, tmp_path, capsys):
    out = tmp_path / "elsewhere.json"
    report, err = _main(capsys, run, *R_PRECISION, "--out", out)
    assert json.loads(out.read_text()) == report and f"written {out}" in err
    assert not (run / "evaluation.json").exists()


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", "\xff\xfe"])
def test_an_evaluation_json_that_is_not_an_object_is_replaced_with_a_warning(run, capsys, content):
    (run / "evaluation.json").write_bytes(content.encode("latin-1"))
    report, err = _main(capsys, run, *R_PRECISION)
    assert json.loads((run / "evaluation.json").read_text()) == report
    assert "warning" in err and "evaluation.json" in err and "replaced" in err


@pytest.mark.filterwarnings("ignore:attribute classifier:UserWarning")  # trained 2 steps: unreliable, on purpose
def test_caption_accuracy_records_its_settings_and_announces_its_figure(tmp_path, capsys):
    run = _make_run(tmp_path, synthetic=True)
    (run / "evaluation.json").write_text(json.dumps({"r_precision": {"mean": 0.5}}))
    report, err = _main(capsys, run, "--max-samples", "4", "--seed", "7")
    entry = report["caption_accuracy"]
    assert entry["max_samples"] == 4 and entry["seed"] == 0  # the caption accuracy uses the run's train.seed
    assert entry["generated"]["count"] == 4 and entry["real"]["count"] == 4
    assert 0.0 <= entry["generated"]["overall"] <= 1.0
    assert f"written {run / 'caption_accuracy.png'}" in err.splitlines()
    assert (run / "caption_accuracy.png").stat().st_size > 0
    assert json.loads((run / "evaluation.json").read_text()) == {"r_precision": {"mean": 0.5}, **report}


def _bad(tmp_path, run):
    (tmp_path / "a-folder").mkdir()
    pickled = tmp_path / "weights.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, pickled)
    return {
        "gpu": ([run, "--device", "gpu"], r"--device must be cpu, cuda or cuda:N; got 'gpu'"),
        "no cuda": ([run, "--device", "cuda"], r"--device is 'cuda', but torch sees no CUDA GPU"),
        "missing weights": (
            [run, "--inception-weights", tmp_path / "missing.pth"],
            r"--inception-weights .*missing\.pth' does not exist: expected .*2015-12-05",
        ),
        "weights folder": ([run, "--inception-weights", tmp_path / "a-folder"], r"--inception-weights .* not a file"),
        "few IS images": (
            [run, "--inception-weights", pickled, "--max-samples", "9"],
            r"--max-samples must be at least 10 with --inception-weights",
        ),
        "out folder": ([run, *R_PRECISION, "--out", tmp_path / "a-folder"], r"--out .*a-folder' is a folder"),
        "out parent": ([run, *R_PRECISION, "--out", tmp_path / "no" / "x.json"], r"--out .*: its folder .* does not"),
        "no run": ([tmp_path / "no-run", *R_PRECISION], r"run folder .*no-run does not exist"),
        "not a run": ([tmp_path / "a-folder", *R_PRECISION], r"a-folder is not a t2ifast run folder \(no config"),
        "damsm attributes": ([run, "--damsm-attributes", "4"], r"--damsm-attributes needs a run on the synthetic set"),
        "nothing to do": ([run], r"nothing to evaluate: .*pass --r-precision"),
    }


@pytest.mark.parametrize(
    "case",
    ["gpu", "no cuda", "missing weights", "weights folder", "few IS images", "out folder", "out parent", "no run",
     "not a run", "damsm attributes", "nothing to do"],
)  # fmt: skip
def test_bad_arguments_are_one_line_errors_before_any_work(run, tmp_path, monkeypatch, case):
    argv, message = _bad(tmp_path, run)[case]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(inception_metrics, "require_libraries", lambda: None)  # as if torchmetrics were installed

    def must_not_load(*args, **kwargs):
        raise AssertionError("the run was loaded before the arguments were checked")

    monkeypatch.setattr(evaluate, "load_run", must_not_load)
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main([str(a) for a in argv])
    text = str(exit_info.value.code)
    assert text.startswith("t2ifast.evaluate: ") and "\n" not in text
    assert re.search(message, text), text
    assert not (run / "evaluation.json").exists()


def test_missing_inception_libraries_are_named_at_startup(run, tmp_path, monkeypatch):
    weights = tmp_path / "weights.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, weights)
    monkeypatch.setitem(sys.modules, "torchmetrics", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)
    monkeypatch.setattr(evaluate, "load_run", lambda *a, **k: pytest.fail("the run was loaded"))
    with pytest.raises(SystemExit, match=r"^t2ifast\.evaluate: --inception-weights: .*pip install 't2ifast\[eval\]'"):
        evaluate.main([str(run), "--device", "cpu", "--inception-weights", str(weights), "--max-samples", "10"])


# ---- python -m t2ifast.info ----


def test_info_has_a_help_and_refuses_unknown_arguments(capsys):
    with pytest.raises(SystemExit) as exit_info:
        info.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m t2ifast.info") and "--help" in out and "python         " not in out
    with pytest.raises(SystemExit) as exit_info:
        info.main(["--bogus"])
    assert exit_info.value.code == 2 and "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_info_prints_the_report(capsys):
    info.main([])
    assert capsys.readouterr().out.splitlines() == info.report()
