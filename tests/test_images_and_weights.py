"""Image reading (grey, 16-bit, corrupt) and pretrained weight resolution (hashes, layouts)."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from defectkit.data.images import load_image
from defectkit.data.samples import DatasetError
from defectkit.data.tensors import image_tensor
from defectkit.models import backbones
from defectkit.models.backbones import WeightsError, create_backbone, find_weights_file
from defectkit.runs import sha256_of


def test_grey_and_16bit_images_become_rgb(tmp_path):
    Image.fromarray(np.full((8, 10), 77, np.uint8)).save(tmp_path / "g.png")
    Image.fromarray(np.arange(80, dtype=np.uint16).reshape(8, 10) * 800).save(tmp_path / "w.png")
    grey = image_tensor(tmp_path / "g.png")
    assert grey.shape == (3, 8, 10) and grey.dtype == torch.uint8 and grey[2, 0, 0] == 77
    wide = np.asarray(load_image(tmp_path / "w.png"))
    assert wide.shape == (8, 10, 3) and wide.min() == 0 and wide.max() == 255


def test_truncated_and_corrupt_files_are_named(tmp_path):
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "ok.jpg")
    data = (tmp_path / "ok.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.png").write_text("not an image")
    for name in ("cut.jpg", "text.png"):
        with pytest.raises(DatasetError, match=name + r".*corrupt or truncated"):
            load_image(tmp_path / name)
    with pytest.raises(DatasetError, match=r"no image file .*gone.jpg: check the path"):
        load_image(tmp_path / "gone.jpg")


def _tiny_source(monkeypatch, tmp_path, sha: str) -> Path:
    """Register weights for resnet18 in a cache folder, saved from timm in another key order."""
    model, _ = create_backbone("resnet18", 1000, pretrained=False)
    path = tmp_path / "resnet18-test.pth"
    torch.save(model.state_dict(), path)
    source = backbones.WeightsSource(
        model="resnet18", filename=path.name, sha256=sha, preprocessing=backbones.Preprocessing()
    )
    monkeypatch.setitem(backbones._SOURCES, "resnet18", source)
    monkeypatch.setenv("DEFECTKIT_WEIGHTS_DIR", str(tmp_path))
    return path


def test_cached_file_with_wrong_hash_is_refused(monkeypatch, tmp_path):
    path = _tiny_source(monkeypatch, tmp_path, sha="0" * 64)
    with pytest.raises(WeightsError, match=f"{path.name} has sha256 .* expected 0000"):
        find_weights_file("resnet18")


def test_cached_file_with_right_hash_loads(monkeypatch, tmp_path):
    path = _tiny_source(monkeypatch, tmp_path, sha="")
    right = replace(backbones._SOURCES["resnet18"], sha256=sha256_of(path))
    monkeypatch.setitem(backbones._SOURCES, "resnet18", right)
    reference = torch.load(path, weights_only=True)
    model, info = create_backbone("resnet18", 3, pretrained=True)
    assert info["weights_file"] == str(path)
    assert torch.equal(model.state_dict()["conv1.weight"], reference["conv1.weight"])
    assert model.state_dict()["fc.weight"].shape == (3, 512)  # a fresh head of the new size


def test_a_file_given_without_a_hash_has_its_hash_logged(tmp_path, caplog):
    import logging

    model, _ = create_backbone("resnet18", 1000, pretrained=False)
    path = tmp_path / "mine.pth"
    torch.save(model.state_dict(), path)
    with caplog.at_level(logging.INFO, logger="defectkit"):
        create_backbone("resnet18", 3, pretrained=True, weights=str(path))
    digest = sha256_of(path)
    assert f"{path} has sha256 {digest}" in caplog.text
    assert f"model.weights_sha256={digest}" in caplog.text


def test_explicit_file_hash_and_foreign_keys(tmp_path):
    torch.save({"something.else": torch.zeros(3)}, tmp_path / "w.pth")
    with pytest.raises(WeightsError, match="expected abcd"):
        create_backbone(
            "resnet18", 2, pretrained=True, weights=str(tmp_path / "w.pth"), weights_sha256="abcd"
        )
    with pytest.raises(WeightsError, match="tensor names do not match"):
        create_backbone("resnet18", 2, pretrained=True, weights=str(tmp_path / "w.pth"))
    with pytest.raises(WeightsError, match="does not exist"):
        create_backbone("resnet18", 2, pretrained=True, weights=str(tmp_path / "none.pth"))


def test_pickled_objects_are_not_loaded(tmp_path):
    torch.save({"model": object()}, tmp_path / "evil.pth")
    with pytest.raises(WeightsError, match="cannot load weights"):
        backbones.load_state_file(tmp_path / "evil.pth")


def test_unknown_backbone_suggests_names():
    with pytest.raises(WeightsError, match="unknown backbone 'resnet81'.*Did you mean"):
        create_backbone("resnet81", 2, pretrained=False)


@pytest.mark.parametrize(
    "name, prefix",
    [
        ("tf_efficientnet_lite0", "579344248a93"),
        ("tf_efficientnet_lite1", "77cc7160d37b"),
        ("tf_efficientnet_lite2", "9656183eaeaf"),
    ],
)
def test_offline_backbone_weights_are_found_and_checked(name, prefix):
    path, digest = find_weights_file(name)
    assert path is not None and digest.startswith(prefix)
    assert backbones.preprocessing_for(name).mean == (0.5, 0.5, 0.5)


@pytest.mark.integration
@pytest.mark.parametrize(
    "name, side",
    [
        ("tf_efficientnet_lite0", 224),
        ("tf_efficientnet_lite1", 240),
        ("tf_efficientnet_lite2", 260),
    ],
)
def test_imagenet_head_names_the_sample_photos(name, side):
    """The offline ImageNet weights really loaded: hog (341) and airliner (404) at each
    model's native side."""
    from torchvision.transforms import v2 as T

    from tests.conftest import shared

    samples = shared("imagenet-samples")
    model, _ = create_backbone(name, 1000, pretrained=True)
    prep = backbones.preprocessing_for(name)
    transform = T.Compose(
        [
            T.Resize(side, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(side),
            T.ToDtype(torch.float32, scale=True),
            T.Normalize(prep.mean, prep.std),
        ]
    )
    model.eval()
    for name, expected in (("pig.jpg", 341), ("plane.jpg", 404)):
        with torch.no_grad():
            probs = model(transform(image_tensor(samples / name))[None]).softmax(1)[0]
        assert int(probs.argmax()) == expected
        assert float(probs.max()) > 0.5
