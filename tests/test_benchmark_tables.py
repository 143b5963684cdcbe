"""Every number in the README's benchmark table, its demo sentence and RESULTS.md comes from
benchmarks/results/*.json: regenerated from the JSON, both files are what is committed. The
stale markers are left out of the comparison (they follow the git history, which moves on
with every commit)."""

import re
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STALE = re.compile(
    r"(; )?stale: (no commit recorded|measured with uncommitted changes|"
    r"commit not in this history|code changed since)"
)


@pytest.fixture(scope="module")
def tables():
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("the stale markers read the git history: not a git checkout")
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import tables
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    return tables


def test_results_md_is_the_json_rendered(tables):
    committed = (REPO / "benchmarks" / "RESULTS.md").read_text()
    assert STALE.sub("", committed) == STALE.sub("", tables.results_md()), (
        "benchmarks/RESULTS.md differs from benchmarks/results/*.json: "
        "run python benchmarks/tables.py"
    )


def test_the_readme_numbers_are_the_json_rendered(tables):
    readme = (REPO / "README.md").read_text()
    assert STALE.sub("", readme) == STALE.sub("", tables.readme_with_tables(readme)), (
        "README.md's benchmark table or demo sentence differs from benchmarks/results/*.json: "
        "run python benchmarks/tables.py"
    )


def test_a_run_is_stale_unless_it_measured_this_code(tables):
    assert tables.freshness(None) == "stale: no commit recorded"
    assert tables.freshness("abc+dirty").startswith("stale: measured with uncommitted")
    assert tables.freshness("0" * 40) == "stale: commit not in this history"
    head = tables._git("rev-parse", "HEAD").stdout.strip()
    assert tables.freshness(head) == ""
    first = tables._git("rev-list", "--max-parents=0", "HEAD").stdout.split()[0]
    assert tables.freshness(first) == "stale: code changed since"
    # a hand-edited number is caught
    assert tables.formatted(0.7074, "fraction") == "0.707"
    assert tables.lookup({"gate": {"ng_recall": 0.9}}, "gate.ng_recall") == 0.9


@pytest.mark.parametrize(
    "script", sorted(p.stem for p in (REPO / "benchmarks").glob("*.py")), ids=str
)
def test_every_benchmark_script_imports(script):
    """A script that names a helper common.py no longer has fails here, not after an hour
    of training."""
    import importlib

    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        module = importlib.import_module(script)
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    assert module.__doc__, f"benchmarks/{script}.py says what it measures"


def test_a_detect_row_depends_on_detect_code_and_the_shared_code_alone(tables):
    """code_paths: the files git compares for a detect row are what a detect run can
    execute (its task, the models and data code it imports, the shared modules, detect
    recipes), not the other tasks' folders, their models or their recipes."""
    listed = set(tables._git("ls-files", "--", *tables.code_paths("detect")).stdout.split())
    assert {
        "defectkit/tasks/detect/pipeline.py",
        "defectkit/models/detector.py",
        "defectkit/models/classifier.py",  # detect's pipeline imports it
        "defectkit/models/backbones.py",
        "defectkit/engine/train.py",
        "defectkit/configs/neudet_detect.yaml",
        "constraints.txt",
    } <= listed
    assert not listed & {
        "defectkit/tasks/segment/pipeline.py",
        "defectkit/tasks/anomaly/deploy.py",
        "defectkit/models/segmenter.py",
        "defectkit/models/anomaly/patchcore.py",
        "defectkit/configs/mt_anomaly.yaml",
    }
    # a protocol not tied to one task depends on all of the package
    everything = set(tables._git("ls-files", "--", *tables.code_paths(None)).stdout.split())
    assert listed < everything and "defectkit/models/segmenter.py" in everything
