import random
from pathlib import Path

import pytest

from defectkit.config import SplitConfig
from defectkit.data.samples import DatasetError, Sample, SampleSet
from defectkit.data.splits import (
    grouped_split,
    kfold_split,
    load_manifest,
    make_split,
    save_manifest,
    stratified_split,
)


def _set(counts: dict[str, int]) -> SampleSet:
    samples = tuple(
        Sample(Path(f"/d/{c}_{i:03d}.png"), c, group=f"{c}{i // 2}")
        for c, n in counts.items()
        for i in range(n)
    )
    return SampleSet(Path("/d"), "test", samples, tuple(sorted(counts)))


def test_stratified_is_the_protocol_split():
    data = _set({"a": 10, "b": 7})
    train, test = stratified_split(data.samples, 0.8, seed=0)
    # PROTOCOLS.md: per class sort by path, Random(0).shuffle, first int(0.8 n) train
    expected_a = sorted(str(s.image) for s in data.samples if s.label == "a")
    random.Random(0).shuffle(expected_a)
    assert [str(s.image) for s in train if s.label == "a"] == expected_a[:8]
    assert sum(s.label == "b" for s in train) == int(0.8 * 7) == 5
    assert len(train) + len(test) == 17 and not set(train) & set(test)


def test_same_seed_same_split_other_seed_other_split():
    data = _set({"a": 30})
    assert stratified_split(data.samples, 0.5, 1) == stratified_split(data.samples, 0.5, 1)
    assert stratified_split(data.samples, 0.5, 1) != stratified_split(data.samples, 0.5, 2)


def test_grouped_keeps_groups_together():
    data = _set({"a": 20, "b": 20})
    train, test = grouped_split(data.samples, 0.7, seed=3)
    assert not {s.group for s in train} & {s.group for s in test}
    assert 26 <= len(train) <= 30


def test_kfold_partitions_every_sample_once():
    data = _set({"a": 10, "b": 5})
    seen = []
    for fold in range(5):
        _, test = kfold_split(data.samples, 5, fold, seed=0)
        assert sum(s.label == "a" for s in test) == 2
        seen += test
    assert sorted(map(str, (s.image for s in seen))) == sorted(str(s.image) for s in data.samples)
    with pytest.raises(DatasetError, match="outside 0..4"):
        kfold_split(data.samples, 5, 5, 0)


def test_val_is_carved_from_train_and_manifest_round_trips(tmp_path):
    data = _set({"a": 20, "b": 20})
    config = SplitConfig(test_fraction=0.25, val_fraction=0.2)
    split = make_split(data, config)
    assert (len(split.train), len(split.val), len(split.test)) == (24, 6, 10)
    save_manifest(split, data, tmp_path / "split.json", config)
    again = load_manifest(data, tmp_path)
    assert set(again.train) == set(split.train) and set(again.test) == set(split.test)
    other = _set({"c": 40})
    with pytest.raises(DatasetError, match="not in /d"):
        load_manifest(other, tmp_path / "split.json")


def test_official_needs_split_lists():
    with pytest.raises(DatasetError, match="official"):
        make_split(_set({"a": 4}), SplitConfig(method="official"))


def test_grouped_split_keeps_near_duplicate_images_together(synthetic_root, tmp_path):
    import shutil

    import numpy as np
    from PIL import Image

    from defectkit.data.formats import read_dataset

    data_dir = tmp_path / "data"
    shutil.copytree(synthetic_root, data_dir)
    original = np.asarray(Image.open(data_dir / "ok" / "ok_3.png"), dtype=np.int16)
    Image.fromarray(np.clip(original + 4, 0, 255).astype(np.uint8)).save(
        data_dir / "ok" / "ok_3_resaved.png"
    )  # a brighter copy: not byte-identical
    data = read_dataset(data_dir)
    for seed in range(6):
        split = make_split(data, SplitConfig(method="grouped", val_fraction=0, seed=seed))
        sides = {s.image.name: part for part, members in split.parts().items() for s in members}
        assert sides["ok_3.png"] == sides["ok_3_resaved.png"]
