"""Resume is exact and refuses what it cannot resume: an interrupted run (classify, with
and without a moving average of its weights, segment, or an anomaly autoencoder
mid-training) continued from its last checkpoint gives the uninterrupted run's history
value for value; a resumed anomaly run reuses its fit; another task, changed settings, a
finished run or a run that never checkpointed are refused. `calibrate` makes a finished
run's decisions again without training, keeping the evaluation it replaces."""

from pathlib import Path

import pytest
import yaml

import defectkit
from defectkit.cli import main
from defectkit.config import ConfigError
from defectkit.engine.train import load_checkpoint
from defectkit.tasks.anomaly import pipeline as anomaly
from defectkit.tasks.classify import pipeline as classify
from defectkit.tasks.segment import pipeline as segment

CLASSIFY = [
    "data.image_size=64",
    "train.epochs=3",
    "train.batch_size=8",
    "train.sampler=oversample",  # a sampler with its own generator, saved and restored too
    "split.val_fraction=0.2",
]
AUTOENCODER = [
    "task=anomaly",
    "anomaly.method=autoencoder",
    "anomaly.good_label=Ok",
    "anomaly.epochs=3",
    "data.image_size=64",
]
SEGMENT = [
    "task=segment",
    "data.image_size=64",
    "train.epochs=3",
    "train.batch_size=8",
    "segment.encoder_depth=3",
]


def _history(run_dir: Path) -> list[dict]:
    rows = load_checkpoint(run_dir / "checkpoints" / "last.pt")["history"]
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def _interrupt_after_first_epoch(monkeypatch, module, name: str) -> None:
    """The module's `name` raises KeyboardInterrupt on its second call: at the start of
    epoch 2, after epoch 1's checkpoint was written."""
    original, calls = getattr(module, name), {"n": 0}

    def interrupting(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, interrupting)


@pytest.mark.parametrize(
    ("module", "hook", "settings", "data"),
    [
        (classify, "train_one_epoch", CLASSIFY, "synthetic_root"),
        (classify, "train_one_epoch", [*CLASSIFY, "train.ema=0.9"], "synthetic_root"),
        (segment, "train_one_epoch", SEGMENT, "tiles"),
        (anomaly, "train_one_epoch", AUTOENCODER, "tiles"),
    ],
    ids=["classify", "classify-ema", "segment", "autoencoder"],
)
@pytest.mark.numerics
def test_a_resumed_run_reproduces_the_uninterrupted_one(
    module, hook, settings, data, request, tmp_path, monkeypatch
):
    root = request.getfixturevalue(data)
    overrides = [f"data.root={root}", f"out_dir={tmp_path}", *settings]
    whole, _ = defectkit.train(None, [*overrides, "name=whole"])
    with monkeypatch.context() as patch:
        _interrupt_after_first_epoch(patch, module, hook)
        with pytest.raises(KeyboardInterrupt, match="defectkit train --resume"):
            defectkit.train(None, [*overrides, "name=cut"])
    cut = tmp_path / "cut"
    stopped_after = load_checkpoint(cut / "checkpoints" / "last.pt")["epoch"]
    assert stopped_after < len(_history(whole)) - 1  # epochs were left to run
    defectkit.train(resume=cut)
    assert len(_history(whole)) == len(_history(cut)) >= 2
    assert _history(cut) == _history(whole)  # exact: every RNG and the data order restored


@pytest.fixture(scope="module")
def interrupted(synthetic_root, tmp_path_factory):
    """A classify run folder stopped after its first epoch."""
    out = tmp_path_factory.mktemp("resume")
    with pytest.MonkeyPatch.context() as patch:
        _interrupt_after_first_epoch(patch, classify, "train_one_epoch")
        with pytest.raises(KeyboardInterrupt):
            defectkit.train(
                None, [f"data.root={synthetic_root}", f"out_dir={out}", "name=cut", *CLASSIFY]
            )
    return out / "cut"


def test_resume_refuses_another_task(interrupted, capsys):
    code = main(["train", "--resume", str(interrupted), "--config", "mt_anomaly"])
    assert code == 2
    assert "is a classify run; --config asks for task anomaly" in capsys.readouterr().err


def test_resume_refuses_settings_that_change_the_run_and_lists_them(interrupted):
    with pytest.raises(ConfigError) as caught:
        defectkit.train(None, ["train.lr=0.05", "train.epochs=9"], resume=interrupted)
    message = str(caught.value)
    assert "train.lr: 0.001 -> 0.05" in message and "train.epochs: 3 -> 9" in message
    assert "train.threads" in message  # says what may change


def test_resume_accepts_settings_that_only_change_how_it_runs(interrupted):
    from defectkit.tasks.resume import resume_config

    config = resume_config(interrupted, None, ["train.threads=1", "data.num_workers=0"])
    assert config.train.threads == 1 and config.train.epochs == 3


def test_resume_refuses_finished_anomaly_and_never_checkpointed_runs(tmp_path, interrupted):
    saved = yaml.safe_load((interrupted / "config.yaml").read_text())
    finished = tmp_path / "finished"
    finished.mkdir()
    (finished / "config.yaml").write_text(yaml.safe_dump(saved))
    (finished / "metrics.json").write_text("{}")
    with pytest.raises(ConfigError, match="finished run"):
        defectkit.train(resume=finished)
    anomaly = tmp_path / "anomaly"
    anomaly.mkdir()
    (anomaly / "config.yaml").write_text(yaml.safe_dump({**saved, "task": "anomaly"}))
    with pytest.raises(ConfigError, match=r"no checkpoints/fitted.pt: it stopped before"):
        defectkit.train(resume=anomaly)
    early = tmp_path / "early"
    early.mkdir()
    (early / "config.yaml").write_text(yaml.safe_dump(saved))
    (early / "FAILED.txt").write_text("DatasetError: 3 bad images\n")
    with pytest.raises(ConfigError, match=r"no checkpoints/last.pt.*3 bad images"):
        defectkit.train(resume=early)


def test_an_interrupt_before_the_first_checkpoint_leaves_no_folder(
    synthetic_root, tmp_path, monkeypatch
):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(classify, "train_one_epoch", interrupt)
    with pytest.raises(KeyboardInterrupt, match="nothing was trained"):
        defectkit.train(None, [f"data.root={synthetic_root}", f"out_dir={tmp_path}", "name=r"])
    assert not (tmp_path / "r").exists()


def test_a_resumed_anomaly_run_reuses_its_fit(tiles, tmp_path, monkeypatch):
    """Interrupted after the fit (while scoring): --resume loads fitted.pt, never fits
    again, and ends with the uninterrupted run's numbers."""
    from defectkit.models.anomaly.patchcore import PatchCore

    overrides = [
        f"data.root={tiles}",
        "data.image_size=64",
        "anomaly.good_label=Ok",
        "anomaly.method=patchcore",
        "anomaly.blur_sigma=1",
        f"out_dir={tmp_path}",
    ]
    _, whole = defectkit.train("mt_anomaly", [*overrides, "name=whole"])
    with monkeypatch.context() as patch:

        def stop(*args, **kwargs):
            raise KeyboardInterrupt

        patch.setattr(anomaly, "score", stop)
        with pytest.raises(KeyboardInterrupt, match="defectkit train --resume"):
            defectkit.train("mt_anomaly", [*overrides, "name=cut"])
    cut = tmp_path / "cut"
    assert (cut / "checkpoints" / "fitted.pt").is_file() and not (cut / "metrics.json").exists()

    def no_refit(*args, **kwargs):
        raise AssertionError("the resumed run fitted again")

    monkeypatch.setattr(PatchCore, "fit", no_refit)
    _, resumed = defectkit.train(resume=cut)
    for key in ("image_auroc", "pixel_auroc", "threshold", "f1_calibrated"):
        assert resumed[key] == pytest.approx(whole[key], rel=1e-6), key
    assert resumed["training_check"] == whole["training_check"]


def test_calibrate_chooses_a_finished_runs_threshold_again_and_keeps_the_one_before(
    tmp_path, capsys, monkeypatch
):
    """An OK/NG classifier: `calibrate` with another threshold rule moves the threshold to
    what that rule picks on the same validation images, trains nothing (history and
    checkpoints untouched, ROC AUC unchanged), and keeps the evaluation it replaced; a bad
    rule is refused before anything moves, and a failure half-way puts the run back."""
    import json

    from defectkit.data.synthetic import make_classify_set

    root = make_classify_set(tmp_path / "data", per_class=24, size=64, classes=("ok", "spot"))
    overrides = [f"data.root={root}", f"out_dir={tmp_path}", "name=run", *CLASSIFY]
    run_dir, first = defectkit.train(
        None, [*overrides, "split.val_fraction=0.3", "eval.positive=spot"]
    )
    history = (run_dir / "history.csv").read_text()
    last = (run_dir / "checkpoints" / "last.pt").stat().st_mtime_ns
    assert first["binary"]["threshold_rule"] == "youden"

    code = main(
        [
            "calibrate",
            str(run_dir),
            "--set",
            "eval.threshold_rule=recall",
            "--set",
            "eval.target=1.0",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "before (" in printed and "report:" in printed
    after = json.loads((run_dir / "metrics.json").read_text())
    binary = after["binary"]
    assert binary["threshold_rule"] == "recall" and binary["threshold_chosen_on"] == "validation"
    # the recall rule with target 1: the highest threshold that keeps every validation NG
    # image, never above the lowest NG score on validation, so at most youden's threshold
    assert binary["threshold"] <= first["binary"]["threshold"] + 1e-12
    assert binary["auc"] == pytest.approx(first["binary"]["auc"], rel=1e-9)  # same weights
    assert (run_dir / "history.csv").read_text() == history
    assert (run_dir / "checkpoints" / "last.pt").stat().st_mtime_ns == last
    meta = json.loads((run_dir / "bundle" / "bundle.json").read_text())
    assert meta["threshold"] == pytest.approx(binary["threshold"])
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["eval"]["threshold_rule"] == "recall" and saved["eval"]["target"] == 1.0
    kept = run_dir / "before" / "1"
    assert json.loads((kept / "metrics.json").read_text()) == json.loads(json.dumps(first))
    assert (kept / "bundle" / "bundle.json").is_file() and (kept / "report.html").is_file()
    assert yaml.safe_load((kept / "config.yaml").read_text())["eval"]["threshold_rule"] == "youden"

    # a rule that does not exist is refused before anything moves
    with pytest.raises(ConfigError, match="eval.threshold_rule='best' is not one of"):
        defectkit.calibrate(run_dir, ["eval.threshold_rule=best"])
    assert not (run_dir / "before" / "2").exists()

    # a calibration that fails half-way leaves the run as it was
    def failing(**kwargs):
        (run_dir / "metrics.json").write_text("{}")
        raise RuntimeError("disk full")

    monkeypatch.setattr(defectkit, "train", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        defectkit.calibrate(run_dir, ["eval.target=0.9"])
    assert json.loads((run_dir / "metrics.json").read_text()) == after
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["eval"]["target"] == 1.0
    assert (run_dir / "bundle" / "bundle.json").is_file()
    assert sorted(p.name for p in (run_dir / "before").iterdir()) == ["1"]


def test_calibrate_refuses_what_would_change_the_weights_and_unfinished_runs(interrupted):
    with pytest.raises(ConfigError, match="no metrics.json: not a finished run"):
        defectkit.calibrate(interrupted, ["eval.target=0.9"])
    assert not (interrupted / "before").exists()
    import shutil

    finished = interrupted.parent / "finished-copy"
    shutil.copytree(interrupted, finished)
    (finished / "metrics.json").write_text("{}")
    with pytest.raises(ConfigError) as caught:
        defectkit.calibrate(finished, ["train.lr=0.05", "eval.target=0.9"])
    message = str(caught.value)
    assert "calibrating" in message and "train.lr: 0.001 -> 0.05" in message
    assert "eval.target" not in message.split("\n")[1]  # a calibration setting is allowed
    assert "eval.threshold_rule" in message  # says what may change
    assert not (finished / "before").exists()  # nothing moved before the check
