"""Batch inspection on Ray: a local Ray instance gives exactly the local `predict` rows."""

import csv
import json

import pytest

ray = pytest.importorskip("ray", reason="the [ray] extra is not installed: pip install '.[ray]'")


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance for this module's tests (two CPUs, a small object store)."""
    ray.init(num_cpus=2, object_store_memory=256 * 2**20, include_dashboard=False)
    yield
    ray.shutdown()


def _folder_with_a_bad_file(synthetic_root, tmp_path):
    folder = tmp_path / "incoming"
    folder.mkdir()
    for path in sorted(synthetic_root.rglob("*.png"))[::3]:
        (folder / f"{path.parent.name}_{path.name}").write_bytes(path.read_bytes())
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return folder


def _floats(value):
    return {k: float(v) for k, v in value.items()} if isinstance(value, dict) else float(value)


@pytest.mark.numerics
@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_ray_engine_gives_exactly_the_local_predict_rows(
    local_ray, classify_bundle, synthetic_root, tmp_path, suffix
):
    from defectkit.cli import main

    folder = _folder_with_a_bad_file(synthetic_root, tmp_path)
    local, remote = tmp_path / f"local{suffix}", tmp_path / f"ray{suffix}"
    local_run = ["predict", str(classify_bundle), str(folder), "--batch-size", "4"]
    assert main([*local_run, "--out", str(local)]) == 0
    assert (
        main(
            [
                "predict",
                str(classify_bundle),
                str(folder),
                "--out",
                str(remote),
                *("--engine", "ray", "--actors", "2", "--batch-size", "4"),  # batches alike
            ]
        )
        == 0
    )
    if suffix == ".csv":
        rows = [list(csv.DictReader(path.open())) for path in (local, remote)]
    else:
        rows = [[json.loads(line) for line in path.open()] for path in (local, remote)]
    assert len(rows[0]) == len(list(folder.iterdir())) > 5
    # same rows in the same order, same calls; the numbers to float32 rounding (a batch
    # of other images, or another thread count, moves the last digits)
    for mine, theirs in zip(rows[1], rows[0], strict=True):
        for key, value in theirs.items():
            if value not in ("", None) and (
                key.startswith("score_") or key in ("ng_score", "scores")
            ):
                assert _floats(mine[key]) == pytest.approx(_floats(value), rel=1e-5, abs=1e-7)
            else:
                assert mine[key] == value, key
    broken = [r for r in rows[1] if r["error"]]
    assert [r["image"].rsplit("/", 1)[-1] for r in broken] == ["broken.png"]


def test_ray_engine_writes_parquet_on_the_cluster(
    local_ray, classify_bundle, synthetic_root, tmp_path
):
    import pyarrow.parquet as pq

    from defectkit.runtime.cluster import predict_with_ray
    from defectkit.runtime.inspector import Inspector, expand_inputs

    folder = _folder_with_a_bad_file(synthetic_root, tmp_path)
    paths = list(expand_inputs([folder]))
    result = predict_with_ray(classify_bundle, paths, tmp_path / "out", batch_size=4)
    assert result["format"] == "parquet"
    table = pq.read_table(tmp_path / "out").to_pylist()
    assert sorted(r["index"] for r in table) == list(range(len(paths)))
    local = {
        p.image: p
        for p in Inspector(classify_bundle).predict([p for p in paths if p.name != "broken.png"])
    }
    for row in table:
        if row["image"].endswith("broken.png"):
            assert row["error"] and row["label"] is None
        else:
            assert row["label"] == local[row["image"]].label
            scores = json.loads(row["prediction"])["scores"]
            assert scores == pytest.approx(local[row["image"]].scores, rel=1e-5, abs=1e-7)


def test_without_ray_the_option_says_how_to_install_it(monkeypatch):
    import builtins

    from defectkit.runtime import cluster

    real = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(RuntimeError, match=r"pip install 'defectkit\[ray\]'"):
        cluster._ray()
