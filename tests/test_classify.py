"""The classify task end to end on tiny synthetic images: run folder, strategies, resume,
warm start, bundle, Inspector."""

import csv
from pathlib import Path

import pytest
import torch

from defectkit.config import load_config
from defectkit.engine.train import load_checkpoint, save_checkpoint
from defectkit.runtime.inspector import Inspector
from defectkit.tasks import get_task
from defectkit.tasks.classify import pipeline as classify
from tests.parity import assert_same_class_call


def _config(root: Path, out: Path, name: str, *extra: str):
    return load_config(
        None,
        [
            f"data.root={root}",
            "data.image_size=64",
            f"out_dir={out}",
            f"name={name}",
            "train.epochs=2",
            "train.batch_size=8",
            "split.test_fraction=0.25",
            "split.val_fraction=0.2",
            "train.lr=0.002",
            *extra,
        ],
    )


def _run(config, resume=False):
    run_dir = Path(config.out_dir) / config.name
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir, get_task("classify")(config, run_dir, resume)


@pytest.fixture(scope="module")
def finetuned(synthetic_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    return _run(_config(synthetic_root, out, "ft", "train.epochs=4"))


def test_run_folder_holds_everything(finetuned):
    run_dir, result = finetuned
    for name in (
        "config.yaml",
        "split.json",
        "data_summary.json",
        "history.csv",
        "metrics.json",
        "predictions.csv",
        "report.html",
        "checkpoints/last.pt",
        "checkpoints/best.pt",
        "bundle/model.safetensors",
        "bundle/bundle.json",
        "plots/confusion_matrix.png",
    ):
        assert (run_dir / name).is_file(), name
    assert any((run_dir / "tensorboard").iterdir())
    assert result["split_size"] == 12 and result["epochs_run"] == 4
    assert "Worst mistakes" in (run_dir / "report.html").read_text()


def test_finetuning_lowers_the_training_loss(finetuned):
    run_dir, _ = finetuned
    history = load_checkpoint(run_dir / "checkpoints" / "last.pt")["history"]
    assert history[-1]["train_loss"] < history[0]["train_loss"]


@pytest.mark.numerics
def test_inspector_reproduces_the_run_predictions(finetuned):
    run_dir, _result = finetuned
    inspector = Inspector(run_dir)
    rows = list(csv.DictReader((run_dir / "predictions.csv").open()))
    paths = [row["image"] for row in rows]
    for prediction, row in zip(inspector.predict(paths, batch_size=5), rows, strict=True):
        assert_same_class_call(prediction, row)
    assert {row["truth"] for row in rows} == {"ok", "scratch", "spot"}
    ok = next(iter(inspector.predict(paths[:1])))
    assert ok.ok == (ok.label == "ok") and ok.ng_score == pytest.approx(1 - ok.scores["ok"])


def test_frozen_strategy_trains_only_the_head(synthetic_root, tmp_path):
    config = _config(synthetic_root, tmp_path, "frozen", "train.strategy=frozen", "train.epochs=10")
    run_dir, result = _run(config)
    assert result["accuracy"] >= 0.9  # pretrained features separate scratches and spots; chance 1/3
    reference, _, _ = classify.build_classifier(config.model, 3, pretrained=True)
    trained = load_checkpoint(run_dir / "checkpoints" / "best.pt")["model"]
    assert torch.equal(trained["conv_stem.weight"], reference.state_dict()["conv_stem.weight"])
    assert not torch.equal(
        trained["classifier.weight"], reference.state_dict()["classifier.weight"]
    )


def test_freeze_then_unfreeze_moves_the_backbone_after_the_frozen_epochs(
    synthetic_root, tmp_path, monkeypatch
):
    states = []
    original = classify.train_one_epoch

    def spy(model, *args, **kwargs):
        stats = original(model, *args, **kwargs)
        states.append(model.conv_stem.weight.detach().cpu().clone())
        return stats

    monkeypatch.setattr(classify, "train_one_epoch", spy)
    config = _config(
        synthetic_root,
        tmp_path,
        "ftu",
        "train.strategy=freeze_then_unfreeze",
        "train.unfreeze_epoch=1",
        "train.epochs=2",
    )
    _run(config)
    reference, _, _ = classify.build_classifier(config.model, 3, pretrained=True)
    assert torch.equal(states[0], reference.conv_stem.weight)
    assert not torch.equal(states[1], states[0])


@pytest.mark.numerics
def test_interrupted_run_resumes_where_it_stopped(synthetic_root, tmp_path, monkeypatch):
    calls = {"n": 0}
    original = classify.train_one_epoch

    def interrupt_second_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(classify, "train_one_epoch", interrupt_second_epoch)
    config = _config(synthetic_root, tmp_path, "resume", "train.epochs=3")
    with pytest.raises(KeyboardInterrupt, match="defectkit train --resume"):
        _run(config)
    run_dir = tmp_path / "resume"
    first = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert first["epoch"] == 0 and (run_dir / "split.json").is_file()
    monkeypatch.setattr(classify, "train_one_epoch", original)
    _, result = _run(config, resume=True)
    history = load_checkpoint(run_dir / "checkpoints" / "last.pt")["history"]
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert history[0] == first["history"][0]
    assert result["epochs_run"] == 3


def test_warm_start_from_an_earlier_run(finetuned, synthetic_root, tmp_path):
    source_dir, _ = finetuned
    config = _config(
        synthetic_root, tmp_path, "warm", f"train.init_from={source_dir}", "train.epochs=1"
    )
    _, result = _run(config)
    assert "head kept" in result["weights"]["warm_start"]


def test_warm_start_refuses_another_backbone_or_task(finetuned, synthetic_root, tmp_path):
    source_dir, _ = finetuned
    config = _config(
        synthetic_root,
        tmp_path,
        "warm2",
        f"train.init_from={source_dir}",
        "model.backbone=mobilenetv2_100",
        "model.pretrained=false",
    )
    with pytest.raises(ValueError, match="set model.backbone=tf_efficientnet_lite0"):
        _run(config)
    other = load_checkpoint(source_dir / "checkpoints" / "best.pt")
    save_checkpoint(tmp_path / "seg.pt", {**other, "task": "segment"})
    config = _config(synthetic_root, tmp_path, "warm3", f"train.init_from={tmp_path / 'seg.pt'}")
    with pytest.raises(ValueError, match="is a segment checkpoint"):
        _run(config)


def test_scratch_with_imbalance_options_runs(synthetic_root, tmp_path):
    config = _config(
        synthetic_root,
        tmp_path,
        "scratch",
        "train.strategy=scratch",
        "model.backbone=resnet18",
        "train.loss=focal",
        "train.class_weights=balanced",
        "train.sampler=undersample",
        "train.optimizer=sgd",
        "train.schedule=step",
        "train.early_stopping=1",
        "train.epochs=4",
        "data.augment=light",
        "train.label_smoothing=0.1",
    )
    run_dir, result = _run(config)
    assert result["weights"] == {"pretrained": False}
    # early_stopping=1: the run ends at the first epoch whose validation loss is no better
    # than the best before it, or after all 4 (the loop's own rule: tests/test_fit_loop.py)
    with open(run_dir / "history.csv") as history:
        losses = [float(row["val_loss"]) for row in csv.DictReader(history)]
    assert result["epochs_run"] == len(losses)
    worse = [n for n in range(1, len(losses)) if losses[n] >= min(losses[:n])]
    assert worse in ([], [len(losses) - 1])  # only the last epoch may have been no better
    assert worse or len(losses) == 4  # and a run that stopped early stopped on one


def test_ordinal_loss_trains_and_an_unknown_loss_is_refused_before_training(
    synthetic_root, tmp_path
):
    from defectkit.config import ConfigError

    config = _config(
        synthetic_root,
        tmp_path,
        "ordinal",
        "train.strategy=frozen",
        "train.loss=ordinal",
        "train.ordinal_weight=2.0",
        "train.epochs=10",
    )
    _, result = _run(config)
    assert result["accuracy"] >= 0.9  # as cross-entropy on the same features; chance 1/3
    with pytest.raises(ConfigError, match="train.loss='hinge' is not one of"):
        _run(_config(synthetic_root, tmp_path, "hinge", "train.loss=hinge"))
    assert not (tmp_path / "hinge" / "checkpoints").exists()


def test_unknown_strategy_is_refused(synthetic_root, tmp_path):
    with pytest.raises(ValueError, match="unknown train.strategy 'fancy'"):
        _run(_config(synthetic_root, tmp_path, "bad", "train.strategy=fancy"))


def test_ok_ng_threshold_is_chosen_on_validation_and_travels_in_the_bundle(tmp_path):
    from defectkit.data.synthetic import make_classify_set

    root = make_classify_set(tmp_path / "data", per_class=20, size=64, classes=("ok", "spot"))
    (root / "spot").rename(root / "ng")
    config = _config(
        root,
        tmp_path,
        "okng",
        "train.strategy=frozen",
        "train.epochs=10",
        "eval.threshold_rule=specificity",
        "eval.target=0.9",
    )
    run_dir, result = _run(config)
    binary = result["binary"]
    assert result["positive"] == "ng" and binary["threshold_chosen_on"] == "validation"
    assert 0.0 <= binary["auc"] <= 1.0 and "OK / NG" in (run_dir / "report.html").read_text()
    inspector = Inspector(run_dir)
    assert inspector.threshold == pytest.approx(binary["threshold"])
    (prediction,) = inspector.predict([next((root / "ng").iterdir())])
    assert prediction.ok == (prediction.ng_score < binary["threshold"])
    assert prediction.label == ("ok" if prediction.ok else "ng")


def test_altered_bundle_is_refused(finetuned, tmp_path):
    import shutil

    from defectkit.bundle import BundleError

    bundle = tmp_path / "bundle"
    shutil.copytree(finetuned[0] / "bundle", bundle)
    weights = bundle / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="does not match the checksum"):
        Inspector(bundle)


def test_ok_ng_report_and_csv_show_what_the_bundle_decides(synthetic_root, tmp_path):
    """The headline numbers, confusion matrix and predictions.csv of an OK/NG run are the
    bundle's decisions at its threshold, not a 0.5 cut-off."""
    import json
    import shutil

    root = tmp_path / "okng"
    shutil.copytree(synthetic_root / "ok", root / "ok")
    shutil.copytree(synthetic_root / "spot", root / "ng")
    # recall 1.0 on validation: the threshold goes below the NG scores of all NG images
    config = _config(
        root, tmp_path, "okng", "eval.threshold_rule=recall", "eval.target=1.0", "train.epochs=1"
    )
    run_dir, result = _run(config)
    threshold = result["binary"]["threshold"]
    assert threshold != pytest.approx(0.5)
    assert "the bundle's threshold" in result["decided_by"]
    rows = list(csv.DictReader((run_dir / "predictions.csv").open()))
    for row in rows:
        assert row["label"] == ("ng" if float(row["score_ng"]) >= threshold else "ok")
        assert float(row["threshold"]) == pytest.approx(threshold, rel=1e-6)
    correct = sum(row["label"] == row["truth"] for row in rows)
    assert result["accuracy"] == pytest.approx(correct / len(rows))
    matrix = result["confusion_matrix"]  # rows: truth, columns: decision (classes sorted)
    assert matrix[0][0] == sum(r["truth"] == "ng" and r["label"] == "ng" for r in rows)
    assert matrix[1][0] == sum(r["truth"] == "ok" and r["label"] == "ng" for r in rows)
    inspector = Inspector(run_dir)
    assert [p.label for p in inspector.predict([r["image"] for r in rows])] == [
        r["label"] for r in rows
    ]
    assert "at_0.5" in result  # the plain view stays, labelled as such
    report = (run_dir / "report.html").read_text()
    assert "Decided as the shipped bundle decides" in report and "For comparison" in report
    assert "110.8914" not in report and "{'pretrained'" not in report
    assert "anomaly:" not in report and "segment:" not in report  # only classify's sections
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["accuracy"] == result["accuracy"]
