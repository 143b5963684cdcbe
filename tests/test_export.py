"""ONNX export and the two Inspector backends: the same scores and decisions."""

import json
import shutil

import pytest

from defectkit.bundle import BundleError
from defectkit.cli import main
from defectkit.runtime.export import check_export, export_onnx
from defectkit.runtime.inspector import Inspector

# every test here compares two backends or implementations (CI reruns them on other
# CPU kernels and on one thread)
pytestmark = pytest.mark.numerics


def _exported_copy(bundle, tmp_path_factory):
    """A copy of a session bundle with model.onnx written into it."""
    copy = tmp_path_factory.mktemp("exported") / "bundle"
    shutil.copytree(bundle, copy)
    export_onnx(copy)
    return copy


@pytest.fixture(scope="module")
def exported_classifier(classify_bundle, tmp_path_factory):
    return _exported_copy(classify_bundle, tmp_path_factory)


@pytest.fixture(scope="module")
def exported_anomaly(anomaly_bundle, tmp_path_factory):
    return _exported_copy(anomaly_bundle, tmp_path_factory)


def test_onnx_classifier_matches_pytorch_for_any_batch_size(exported_classifier, synthetic_root):
    images = sorted(synthetic_root.rglob("*.png"))[:7]
    eager, onnx = Inspector(exported_classifier), Inspector(exported_classifier, "onnx")
    for batch_size in (1, 7):  # dynamic batch: exported with 2
        for a, b in zip(
            eager.predict(images, batch_size), onnx.predict(images, batch_size), strict=True
        ):
            assert a.label == b.label and a.ok == b.ok
            for name, value in a.scores.items():
                assert b.scores[name] == pytest.approx(value, rel=1e-4, abs=1e-5)
    record = json.loads((exported_classifier / "bundle.json").read_text())["onnx"]
    assert record["file"] == "model.onnx" and len(record["sha256"]) == 64


def test_onnx_anomaly_model_carries_its_memory_bank_and_threshold(exported_anomaly, tiles):
    images = sorted(tiles.glob("MT_*/Imgs/*.jpg"))[::4]
    result = check_export(exported_anomaly, images)
    assert result["passed"], result
    assert result["images"] == len(images) and result["decisions_disagree"] == []
    onnx = Inspector(exported_anomaly, "onnx")
    predictions = list(onnx.predict(images))
    assert {p.ok for p in predictions} == {True, False}  # both decisions occur
    assert all(p.heat_map.shape == (64, 64) for p in predictions)
    saved = json.loads((exported_anomaly / "bundle.json").read_text())["onnx"]["check"]
    assert saved["passed"] is True


def test_export_command_checks_on_images(classify_bundle, synthetic_root, tmp_path, capsys):
    bundle = tmp_path / "bundle"
    shutil.copytree(classify_bundle, bundle)
    code = main(["export", str(bundle), "--check", str(synthetic_root / "spot")])
    assert code == 0
    out = capsys.readouterr().out
    assert "16 images" in out and "decisions agree" in out
    assert (bundle / "model.onnx").is_file()


def test_onnx_backend_without_export_or_with_altered_file_is_refused(classify_bundle, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(classify_bundle, bundle)
    with pytest.raises(BundleError, match="defectkit export"):
        Inspector(bundle, "onnx")
    export_onnx(bundle)
    with open(bundle / "model.onnx", "ab") as handle:
        handle.write(b"x")
    with pytest.raises(BundleError, match="does not match the checksum"):
        Inspector(bundle, "onnx")


def test_unknown_backend_is_refused(classify_bundle):
    with pytest.raises(ValueError, match="unknown backend 'tensorrt'"):
        Inspector(classify_bundle, "tensorrt")
