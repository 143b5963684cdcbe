"""Cold start of the service: a fresh process that starts `defectkit serve`'s app on a bundle
and answers its first /inspect request. Per task (a bundle of each, the default backbone,
trained here on the synthetic sets in a few seconds), `--repeats` fresh processes; the
medians of: whole process wall time to the first answer (interpreter start included), import
seconds, app creation (bundle read, model built), first request, peak resident memory, and
how many modules were imported (defectkit's own, and whether training / plotting code was).

    python benchmarks/serve_cold_start.py [--before REV] [--repeats 5]

--before REV measures the same bundles with the code of an earlier commit too (a git
worktree under benchmarks/runs/, put first on PYTHONPATH), for a before / after table.
Writes results/serve-cold-start.json (and so its table in RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import REPO, RUNS, git_sha, save_results

TASKS = {
    # task: (synthetic set maker, overrides of a short run)
    "classify": ("make_classify_set", ["train.epochs=1"]),
    "segment": ("make_mask_set", ["task=segment", "train.epochs=1"]),
    "anomaly": ("make_mask_set", ["task=anomaly", "anomaly.good_label=Ok"]),
    "detect": ("make_box_set", ["task=detect", "train.epochs=1"]),
}
HEAVY = ("defectkit.engine", "defectkit.report", "matplotlib", "sklearn", "tensorboard", "tqdm")

CHILD = """
import time
tick = time.perf_counter()
import io, json, resource, sys
from PIL import Image
from fastapi.testclient import TestClient
from defectkit.serve import create_app
imported = time.perf_counter()
client = TestClient(create_app(sys.argv[1], workers=1))
created = time.perf_counter()
buffer = io.BytesIO()
Image.new("RGB", (64, 64), (90, 90, 90)).save(buffer, format="PNG")
answer = client.post("/inspect", files=[("files", ("a.png", buffer.getvalue(), "image/png"))])
assert answer.status_code == 200, answer.text
done = time.perf_counter()
import defectkit
print(json.dumps({
    "code": defectkit.__file__,
    "import_s": imported - tick,
    "app_s": created - imported,
    "first_request_s": done - created,
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "modules": sorted(sys.modules),
}))
"""


def bundles() -> dict[str, Path]:
    """One bundle per task (trained once, then reused from benchmarks/runs/)."""
    from defectkit.data import synthetic

    out = {}
    for task, (maker, overrides) in TASKS.items():
        run_dir = RUNS / f"cold-start-{task}"
        if not (run_dir / "bundle" / "bundle.json").is_file():
            data = RUNS / f"cold-start-data-{maker}"
            if not data.exists():
                size = 96 if maker == "make_box_set" else 64
                kwargs = {"count": 48} if maker == "make_box_set" else {"per_class": 16}
                getattr(synthetic, maker)(data, size=size, **kwargs)
            args = [f"data.root={data}", "data.image_size=64", f"out_dir={RUNS}"]
            args += [f"name={run_dir.name}", *overrides]
            command = [sys.executable, "-m", "defectkit.cli", "train"]
            subprocess.run([*command, *[a for o in args for a in ("--set", o)]], check=True)
        out[task] = run_dir / "bundle"
    return out


def worktree(rev: str) -> Path:
    """The code of `rev`, checked out beside the runs (once)."""
    folder = RUNS / f"code-{rev}"
    if not folder.exists():
        subprocess.run(["git", "worktree", "add", "--detach", str(folder), rev], check=True)
    return folder


def measure(bundle: Path, code: Path | None, repeats: int) -> dict:
    env = dict(os.environ)
    if code is not None:
        env["PYTHONPATH"] = str(code)
    runs = []
    for _ in range(repeats):
        tick = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", CHILD, str(bundle)],
            capture_output=True,
            text=True,
            env=env,
            cwd=RUNS,
            check=True,
        )
        wall = time.perf_counter() - tick
        runs.append({"wall_s": wall, **json.loads(done.stdout.strip().splitlines()[-1])})
    expected = str((code or REPO) / "defectkit")
    assert all(r["code"].startswith(expected) for r in runs), (runs[0]["code"], expected)
    modules = runs[0]["modules"]
    return {
        **{
            key: round(statistics.median(r[key] for r in runs), 3)
            for key in ("wall_s", "import_s", "app_s", "first_request_s", "peak_rss_mb")
        },
        "modules": len(modules),
        "defectkit_modules": sum(m.startswith("defectkit") for m in modules),
        # a package counts as imported when it or any module below it is
        "heavy_imported": [
            h for h in HEAVY if any(m == h or m.startswith(h + ".") for m in modules)
        ],
        "repeats": repeats,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--before", help="an earlier commit to measure too (before / after)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    found = bundles()
    codes: list[tuple[str, Path | None]] = [(git_sha()[:8], None)]  # this checkout
    if args.before:
        codes.insert(0, (args.before, worktree(args.before)))
    runs = []
    for label, code in codes:
        for task, bundle in found.items():
            result = measure(bundle, code, args.repeats)
            print(label, task, {k: v for k, v in result.items()}, flush=True)
            runs.append({"name": f"{task}@{label}", "task": task, "code": label, **result})
    command = "python benchmarks/serve_cold_start.py " + " ".join(sys.argv[1:])
    save_results("serve-cold-start", runs, command.strip())


if __name__ == "__main__":
    main()
