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


def _groups(*sizes: int) -> tuple[Sample, ...]:
    return tuple(
        Sample(Path(f"/d/g{g}_{i:03d}.png"), "ok", group=f"g{g}")
        for g, size in enumerate(sizes)
        for i in range(size)
    )


def test_grouped_never_leaves_a_side_empty_and_refuses_one_group(caplog):
    # three parts of 10 images, 80% train: dealing "while train is short" put all 30 in
    # train; each group now goes where it brings train nearer 24 images
    for seed in range(5):
        train, test = grouped_split(_groups(10, 10, 10), 0.8, seed)
        assert (len(train), len(test)) == (20, 10)
    # two large groups and 90% train: the nearer cut is 40 + 0; the smaller side gets one
    train, val = grouped_split(_groups(20, 20), 0.9, 0, "train / val")
    assert (len(train), len(val)) == (20, 20)
    assert "train / val cut by whole groups puts 20 of 40 images (50%, asked 10%)" in caplog.text
    with pytest.raises(DatasetError, match="all 12 images are one group .'g0'"):
        grouped_split(_groups(12), 0.8, 0)
    assert grouped_split((), 0.8, 0) == ([], [])
    # many small groups: the asked fraction, nothing logged
    caplog.clear()
    train, test = grouped_split(_groups(*[2] * 50), 0.8, 1)
    assert (len(train), len(test)) == (80, 20) and not caplog.text


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


def _parts_set(tmp_path=None) -> SampleSet:
    """12 parts, 3 shots each (part07_a.png, part07_b.png, ...), labels alternating."""
    samples = tuple(
        Sample(
            Path(f"/d/{'ok' if p % 2 else 'ng'}/part{p:02d}_{shot}.png"), "ok" if p % 2 else "ng"
        )
        for p in range(12)
        for shot in "abc"
    )
    return SampleSet(Path("/d"), "class_folders", samples, ("ng", "ok"))


def _sides(split) -> dict[str, set[str]]:
    return {
        part: {s.image.name.split("_")[0] for s in members}
        for part, members in split.parts().items()
    }


@pytest.mark.parametrize("method", ["stratified", "kfold"])
def test_group_by_a_file_name_pattern_keeps_every_part_on_one_side(method):
    data = _parts_set()
    config = SplitConfig(method=method, group_by=r"regex:^(part\d+)_", val_fraction=0.2, folds=4)
    sides = _sides(make_split(data, config))
    assert not (sides["train"] & sides["test"]) and not (sides["train"] & sides["val"])
    assert not (sides["val"] & sides["test"])
    assert sum(len(v) for v in sides.values()) == 12  # every part somewhere, once
    # without groups, shots of one part straddle the cut
    loose = _sides(make_split(data, SplitConfig(method=method, val_fraction=0.2, folds=4)))
    assert loose["train"] & loose["test"]


def test_group_by_a_csv_column_and_by_folder(tmp_path):
    data = _parts_set()
    table = tmp_path / "parts.csv"
    rows = ["file,serial"] + [f"{s.image.name},S{s.image.name[4:6]}" for s in data.samples]
    table.write_text("\n".join(rows) + "\n")
    split = make_split(data, SplitConfig(group_by=f"csv:{table}:serial", val_fraction=0.0))
    sides = _sides(split)
    assert not (sides["train"] & sides["test"]) and len(split.test) % 3 == 0
    shots = tuple(
        Sample(Path(f"/d/part{p:02d}/{shot}.png"), "ok") for p in range(10) for shot in "abc"
    )
    folders = SampleSet(Path("/d"), "x", shots, ("ok",))
    by_folder = make_split(folders, SplitConfig(group_by="folder", val_fraction=0.0))
    sides = {p: {s.image.parent.name for s in m} for p, m in by_folder.parts().items()}
    assert sides["test"] and not (sides["train"] & sides["test"])
    assert len(sides["train"]) + len(sides["test"]) == 10


def test_group_by_names_the_images_left_without_a_group():
    data = _parts_set()
    with pytest.raises(DatasetError, match=r"no group to 36 of 36 image\(s\), e\.g\. part00_a"):
        make_split(data, SplitConfig(group_by=r"regex:^(board\d+)"))
    with pytest.raises(DatasetError, match="use folder, regex:<pattern> or csv"):
        make_split(data, SplitConfig(group_by="serial"))
