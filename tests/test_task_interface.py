"""A new task needs nothing outside its own code and the registry: a tiny task registered
here (OK/NG from an image's mean brightness) goes through training, its bundle, the
Inspector, eval and the service without an edit anywhere else."""

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import defectkit
from defectkit import tasks
from defectkit.bundle import BundleError, load_weights, write_bundle
from defectkit.models.backbones import Preprocessing
from defectkit.predictions import Prediction
from defectkit.runtime.graph import load_model


class Brightness(nn.Module):
    """NG probability = sigmoid(scale * (mean brightness - cut))."""

    def __init__(self):
        super().__init__()
        self.cut = nn.Parameter(torch.zeros(()))
        self.scale = nn.Parameter(torch.tensor(10.0))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.scale * (images.mean((1, 2, 3)) - self.cut))


def _run(config, run_dir: Path, resume: bool) -> dict:
    from defectkit.data.tensors import image_tensor
    from defectkit.tasks.start import read_data

    dataset = read_data(config, run_dir)
    means = {s.label: [] for s in dataset.samples}
    for sample in dataset.samples:
        means[sample.label].append(float(image_tensor(sample.image).float().mean() / 255))
    model = Brightness()
    with torch.no_grad():  # "training": the cut halfway between the two classes' means
        model.cut.fill_((np.mean(means["ok"]) + np.mean(means["ng"])) / 2)
    write_bundle(
        run_dir / "bundle",
        model,
        config,
        Preprocessing((0.0,) * 3, (1.0,) * 3),
        {"task": "brightness", "classes": ["ok", "ng"], "threshold": 0.5},
    )
    return {"cut": float(model.cut.detach())}


def _load_model(folder, meta):
    model = Brightness()
    model.load_state_dict(load_weights(meta))
    return model.eval()


def _decide(inspector, names, outputs, images):
    return [
        Prediction(name, "ng" if p >= 0.5 else "ok", {"ng": float(p)}, bool(p < 0.5), float(p))
        for name, p in zip(names, outputs[0], strict=True)
    ]


def _evaluate(inspector, samples, data):
    predictions = list(inspector.predict([s.image for s in samples]))
    right = [p.label == s.label for p, s in zip(predictions, samples, strict=True)]
    return {"images": len(samples), "accuracy": float(np.mean(right))}


BRIGHTNESS = tasks.Task(
    name="brightness",
    run=_run,
    load_model=_load_model,
    outputs=("ng_probability",),
    graph=lambda model, images, **options: model(images),
    decide=_decide,
    score_names=lambda meta: ["ng"],
    evaluate_bundle=_evaluate,
    summary=lambda result: f"cut {result['cut']:.3f}",
    eval_summary=lambda result: f"accuracy {result['accuracy']:.3f}",
)


def _out(folder: Path) -> list[str]:
    return [f"out_dir={folder}", "name=b"]


@pytest.fixture
def brightness_task(monkeypatch):
    tasks._load_builtin()
    monkeypatch.setitem(tasks._TASKS, "brightness", BRIGHTNESS)
    return BRIGHTNESS


@pytest.fixture
def bright_and_dark(tmp_path) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for label, level in (("ok", 60), ("ng", 190)):
        (tmp_path / "data" / label).mkdir(parents=True)
        for i in range(6):
            pixels = np.clip(rng.normal(level, 20, (32, 32)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(tmp_path / "data" / label / f"{label}_{i}.png")
    return tmp_path / "data"


def test_a_task_registered_outside_the_package_runs_end_to_end(
    brightness_task, bright_and_dark, tmp_path
):
    from fastapi.testclient import TestClient

    from defectkit.serve import create_app

    run_dir, result = defectkit.train(
        None,
        ["task=brightness", f"data.root={bright_and_dark}", "data.image_size=32", *_out(tmp_path)],
    )
    assert 0.3 < result["cut"] < 0.6
    inspector = defectkit.Inspector(run_dir)
    images = sorted(bright_and_dark.rglob("*.png"))
    labels = [p.label for p in inspector.predict(images)]
    assert labels == [path.parent.name for path in images]
    assert defectkit.evaluate(run_dir, bright_and_dark)["accuracy"] == 1.0
    client = TestClient(create_app(run_dir / "bundle", workers=1))
    answer = client.post(
        "/inspect", files=[("files", (images[0].name, images[0].read_bytes(), "image/png"))]
    )
    assert answer.status_code == 200 and answer.json()["results"][0]["label"] == "ng"
    assert client.get("/model").json()["task"] == "brightness"


def test_an_unknown_task_is_named_with_the_registered_ones(bright_and_dark, tmp_path):
    with pytest.raises(ValueError, match=r"unknown task 'nope'; registered: anomaly, classify"):
        defectkit.train(None, ["task=nope", f"data.root={bright_and_dark}", *_out(tmp_path)])
    assert not (tmp_path / "b").exists()  # nothing was made


def test_a_bundle_of_an_unknown_task_is_refused_clearly(
    brightness_task, bright_and_dark, tmp_path, monkeypatch
):
    run_dir, _ = defectkit.train(
        None,
        ["task=brightness", f"data.root={bright_and_dark}", "data.image_size=32", *_out(tmp_path)],
    )
    monkeypatch.delitem(tasks._TASKS, "brightness")
    with pytest.raises(BundleError, match="unknown task 'brightness'"):
        load_model(run_dir / "bundle")


def test_comparing_bundles_of_a_task_that_names_no_truth_is_refused_before_inspecting(
    brightness_task, bright_and_dark, tmp_path, monkeypatch
):
    """compare pairs each bundle's call with the call the image should get: a task without
    `truth` is refused by name (nothing is read as a detector's boxes); given one, it runs."""
    from dataclasses import replace

    from defectkit.runtime.compare import compare_bundles

    run_dir, _ = defectkit.train(
        None,
        ["task=brightness", f"data.root={bright_and_dark}", "data.image_size=32", *_out(tmp_path)],
    )
    with pytest.raises(ValueError, match="brightness task does not say .* cannot be compared"):
        compare_bundles(run_dir, run_dir, bright_and_dark, tmp_path / "cmp")
    assert not (tmp_path / "cmp").exists()
    judged = replace(
        BRIGHTNESS, truth=lambda sample, classes: "NG" if sample.label == "ng" else "OK"
    )
    monkeypatch.setitem(tasks._TASKS, "brightness", judged)
    result = compare_bundles(run_dir, run_dir, bright_and_dark, tmp_path / "cmp")
    assert result["flipped"] == 0 and result["decision_accuracy"] == {"a": 1.0, "b": 1.0}
