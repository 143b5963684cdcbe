"""The `defectkit` command: data, train, calibrate, eval, predict, export, serve, baseline,
compare, review, demo, backbones."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from defectkit.config import ConfigError, load_config

if TYPE_CHECKING:  # imported where used: it pulls in torch
    from defectkit.runtime.evaluate import LabelledData

log = logging.getLogger("defectkit")
LABELS_HELP = (
    "the folder of the label files (labelme .json, YOLO .txt, VOC .xml, masks) where they are "
    "not beside the images; a sibling labels/, label/, annotations/, masks/ or ground_truth/ "
    "is found without it"
)


def _cmd_data_inspect(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from defectkit.data.checks import CheckCache, cache_path, check_samples
    from defectkit.data.formats import read_dataset
    from defectkit.data.summary import format_summary, sample_grid_items, summarize
    from defectkit.report import plot_image_grid
    from defectkit.runs import write_json

    dataset = read_dataset(args.path, args.format, args.label_mode, args.labels)
    bad = check_samples(dataset.samples, cache=CheckCache(cache_path()))
    dataset = replace(dataset, left_out=tuple(bad))
    summary = summarize(dataset)
    print(format_summary(summary))
    out = Path(args.out or Path("runs") / f"data-inspect-{dataset.root.name}")
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "summary.json", summary)
    items = sample_grid_items(dataset, summary)
    boxes_of = {s.image: s.boxes for s in dataset.samples}
    drawn = [boxes_of.get(Path(image), ()) for image, _ in items]
    grid = plot_image_grid(items, out / "samples.png", boxes=drawn if any(drawn) else None)
    print(f"\nwrote {out / 'summary.json'} and a sample grid {grid}")
    return 1 if summary["broken"] else 0


def _cmd_data_formats(args: argparse.Namespace) -> int:
    from defectkit.data.formats import list_formats

    for name, layout in list_formats().items():
        print(f"{name:14s} {layout}")
    return 0


def _train_folds(config) -> int:
    import defectkit

    folder, summary = defectkit.train_folds(config)
    print(f"\n{summary['folds']}-fold cross-validation ({config.task}):")
    for key, mean in summary["mean"].items():
        pooled = summary.get("pooled", {}).get(key)
        print(
            f"  {key:18s} mean {mean:.4f} +- {summary['std'][key]:.4f}"
            + (f"   pooled out-of-fold {pooled:.4f}" if pooled is not None else "")
        )
    print(f"report: {folder / 'report.html'}")
    return 0


def _cmd_learning_curve(args: argparse.Namespace) -> int:
    import defectkit
    from defectkit.tasks.curve import parse_shots

    shots = parse_shots(args.shots)
    if args.repeats < 1:
        raise ValueError(f"--repeats {args.repeats}: give 1 or more")
    config, _, notes = _train_config(args)
    for note in notes:
        log.info("drawn from the data: %s", note)
    folder, summary = defectkit.learning_curve(config, shots, args.repeats, args.keep_models)
    print(f"\nlearning curve ({args.repeats} run(s) per k):")
    for point in summary["points"]:
        print(
            f"  k={point['k']:<4d} test accuracy {point['accuracy_mean']:.4f} +- "
            f"{point['accuracy_std']:.4f}   {point['seconds_mean']:.1f} s per run"
        )
    print(f"report: {folder / 'report.html'}")
    return 0


def _train_config(args: argparse.Namespace):
    """The run's config and, where the data was read for it, the dataset and the notes on
    what was drawn from it: with --data, defaults from the data (tasks/defaults.py) under
    the recipe (if any) and --set; without, the recipe and --set as given."""
    from defectkit.data.formats import read_dataset
    from defectkit.tasks.defaults import draw_defaults

    if not args.data:
        if args.task:
            raise ValueError("--task needs --data PATH: the dataset folder to train on")
        config = load_config(args.config, args.set)
        return config, None, []
    recipe_task = load_config(args.config).task if args.config else None
    task = args.task or recipe_task
    if task is None:
        from defectkit.tasks import list_tasks

        raise ValueError(f"--data needs --task {'|'.join(list_tasks())} (or a recipe)")
    if recipe_task and task != recipe_task:
        raise ValueError(f"--task {task} but recipe {args.config} is a {recipe_task} recipe")
    given = [f"task={task}", *args.set, f"data.root={args.data}"]
    first = load_config(args.config, given)  # the reader's options, the device
    d = first.data
    dataset = read_dataset(args.data, d.format, d.label_mode, d.labels or None)
    base, notes = draw_defaults(task, dataset, first.train.device)
    return load_config(args.config, given, base), dataset, notes


def _dry_run(config, dataset, notes: list[str]) -> int:
    """What a run would use: the data, the values drawn from it, every setting checked."""
    import yaml

    from defectkit.config import config_to_dict
    from defectkit.data.formats import read_dataset
    from defectkit.tasks import get_task
    from defectkit.tasks.defaults import summary_lines
    from defectkit.tasks.settings import check_settings

    if dataset is None:
        d = config.data
        dataset = read_dataset(d.root, d.format, d.label_mode, d.labels or None)
    check_settings(config, dataset)
    print("\n".join(summary_lines(dataset)))
    if notes:
        print("\ndrawn from the data (a recipe or --set overrides any of them):")
        print("\n".join(f"  {note}" for note in notes))
    sections = get_task(config.task).sections
    values = {
        k: v for k, v in config_to_dict(config).items() if not isinstance(v, dict) or k in sections
    }
    print("\nthe run's settings (every one checked against the data):")
    print(yaml.safe_dump(values, sort_keys=False).rstrip())
    print("\ndry run: nothing trained (drop --dry-run to train)")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    import defectkit

    if args.labels:
        args.set = [*args.set, f"data.labels={args.labels}"]
    resume = Path(args.resume) if args.resume else None
    if resume is not None:
        if args.task or args.data or args.dry_run or args.labels:
            raise ValueError(
                "--resume continues a run with its own data and settings: drop "
                "--task, --data, --labels and --dry-run"
            )
        run_dir, result = defectkit.train(args.config, args.set, resume=resume)
    else:
        config, dataset, notes = _train_config(args)
        if args.dry_run:
            return _dry_run(config, dataset, notes)
        for note in notes:
            log.info("drawn from the data: %s", note)
        if args.folds == "all":
            return _train_folds(config)
        run_dir, result = defectkit.train(config)
    if result:  # under torchrun, rank 0 reports
        _print_result(result, run_dir, _task_of(run_dir))
        _run_baseline(run_dir)
    return 0


def _cmd_calibrate(args: argparse.Namespace) -> int:
    """A finished run's thresholds chosen again, its test images evaluated again; the
    summary before and after."""
    import json

    import defectkit
    from defectkit.tasks import get_task

    run_dir = Path(args.run)
    if not args.set:
        raise ValueError(
            "calibrate changes how a finished run decides: give the new settings with --set, "
            "e.g. --set detect.box_rule=precision --set detect.box_target=0.8"
        )
    run_dir, result = defectkit.calibrate(run_dir, args.set)
    before = sorted((run_dir / "before").iterdir(), key=lambda p: int(p.name))[-1]
    task = _task_of(run_dir)
    old = json.loads((before / "metrics.json").read_text())
    print(f"\nbefore ({before}):\n{get_task(task).summary(old)}")
    _print_result(result, run_dir, task)
    _run_baseline(run_dir)
    return 0


def _run_baseline(run_dir: Path) -> None:
    """The monitoring baseline of a finished run (its validation scores and training image
    statistics) into its bundle; a run is never failed for it."""
    from defectkit.runtime.baseline import baseline_images
    from defectkit.runtime.inspector import Inspector
    from defectkit.runtime.monitor import build_baseline, write_baseline

    try:
        calibration, training, references = baseline_images(run_dir)
        inspector = Inspector(run_dir / "bundle")
        baseline = build_baseline(inspector, calibration, training, references)
        path = write_baseline(run_dir / "bundle", baseline)
        print(f"monitoring baseline ({baseline['calibration_images']} calibration images): {path}")
    except Exception as error:  # the model is trained: say what is missing
        log.warning(
            "no monitoring baseline written (%s); `defectkit baseline %s` writes it", error, run_dir
        )


def _cmd_baseline(args: argparse.Namespace) -> int:
    """The drift baseline of a bundle: from a run folder's split, or from given folders."""
    from defectkit.bundle import read_meta
    from defectkit.runtime.baseline import baseline_images
    from defectkit.runtime.inspector import Inspector, expand_inputs
    from defectkit.runtime.monitor import build_baseline, write_baseline

    target = Path(args.bundle)
    if args.calibration:
        calibration = list(expand_inputs(args.calibration))
        training = list(expand_inputs(args.training or args.calibration))
        calibration, references = with_references(calibration, args.reference_from)
    elif (target / "split.json").is_file():
        calibration, training, references = baseline_images(target)
    else:
        raise ValueError(
            f"{target} is not a run folder with a split.json: give --calibration IMAGES "
            "(labelled validation images as served) and --training IMAGES"
        )
    inspector = Inspector(target)
    baseline = build_baseline(inspector, calibration, training, references)
    path = write_baseline(Path(read_meta(target)["folder"]), baseline)
    print(
        f"baseline of {baseline['calibration_images']} calibration and "
        f"{baseline['training_images']} training images -> {path}"
    )
    return 0


def _labelled_data_options(parser: argparse.ArgumentParser, data_help: str) -> None:
    """The options that say which labelled images a bundle is scored on (eval, compare)."""
    parser.add_argument("--data", required=True, help=data_help)
    parser.add_argument("--format", default="auto", help="its layout, or auto-detect")
    parser.add_argument("--label-mode", default="default", help="reader-specific label mode")
    parser.add_argument("--labels", metavar="PATH", help=LABELS_HELP)
    parser.add_argument("--split-manifest", help="a run's split.json, to use one part of it")
    parser.add_argument(
        "--part", default="test", choices=("train", "val", "test"), help="with --split-manifest"
    )
    parser.add_argument(
        "--on-bad-image",
        default="error",
        choices=("error", "skip"),
        help="a file that cannot be read: stop naming every one, or leave it out and list it",
    )


def _labelled_data(args: argparse.Namespace) -> LabelledData:
    from defectkit.runtime.evaluate import LabelledData

    return LabelledData(
        args.data,
        args.format,
        args.label_mode,
        args.split_manifest,
        args.part,
        args.on_bad_image,
        args.labels,
    )


def _cmd_compare(args: argparse.Namespace) -> int:
    """Two bundles on one labelled set: metrics, McNemar, speed, flipped verdicts."""
    from defectkit.runtime.compare import compare_bundles

    result = compare_bundles(
        args.bundle_a, args.bundle_b, _labelled_data(args), args.out, args.backend
    )
    right, test, ms = result["decision_accuracy"], result["mcnemar"], result["ms_per_image_batch1"]
    print(
        f"{result['images']} images: right decisions A {right['a']:.4f}, B {right['b']:.4f}; "
        f"{result['flipped']} flipped; McNemar {test['only_a']} only A vs {test['only_b']} only "
        f"B, exact p = {test['p_exact']:.4g}; batch-1 ms A {ms['a']:.1f}, B {ms['b']:.1f}"
    )
    print(f"report: {Path(args.out) / 'report.html'}")
    _print_left_out(result)
    return 0


def _print_left_out(result: dict) -> None:
    """The unreadable files an evaluation left out (--on-bad-image skip), one line each."""
    for bad in result.get("left_out", []):
        print(f"left out {bad['file']}: {bad['reason']}", file=sys.stderr)


def _cmd_review(args: argparse.Namespace) -> int:
    """What operators said: overturned calls per model label; optionally as a dataset."""
    from defectkit.runtime.feedback import FeedbackStore, export_dataset, summarise

    folder = Path(args.store)
    if not (folder / "feedback.db").is_file():
        raise FileNotFoundError(
            f"{folder / 'feedback.db'} does not exist: give the feedback folder of a service "
            "(default: feedback/ beside the served bundle)"
        )
    store = FeedbackStore(folder)
    summary = summarise(store)
    print(
        f"{summary['answers']} operator answer(s), {summary['overturned']} overturned the "
        f"model; {summary['shadow_disagreements']} shadow disagreement(s)"
    )
    for label, counts in summary["per_model_label"].items():
        said = ", ".join(f"{k[3:]} {v}" for k, v in counts.items() if k.startswith("-> "))
        print(
            f"  model said {label:12s} {counts.get('overturned', 0):4d} of "
            f"{counts['answered']:4d} overturned" + (f" (operators: {said})" if said else "")
        )
    if args.export:
        result = export_dataset(store, args.export)
        print(f"{result['images']} image(s) -> {result['folder']} ({result['layout']})")
        if result["left_out"]:
            print(
                f"{len(result['left_out'])} NG answer(s) without a box left out "
                f"(listed in {Path(result['folder']) / 'needs_boxes.txt'})"
            )
    return 0


def _task_of(run_dir: Path) -> str:
    import yaml

    return yaml.safe_load((run_dir / "config.yaml").read_text())["task"]


def _print_result(result: dict, run_dir: Path, task: str) -> None:
    from defectkit.tasks import get_task

    print(f"\n{get_task(task).summary(result)}")
    print(f"report: {run_dir / 'report.html'}\nbundle: {run_dir / 'bundle'}")


def _cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate a bundle on a labelled dataset folder (all of it, or a saved split part)."""
    from defectkit.runs import write_json
    from defectkit.runtime.evaluate import evaluate_bundle
    from defectkit.tasks import get_task

    result = evaluate_bundle(args.bundle, _labelled_data(args))
    out = Path(args.out)
    write_json(out, result)
    print(f"{get_task(result['task']).eval_summary(result)} -> {out}")
    _print_left_out(result)
    return 0


def with_references(paths: Iterable[Path], reference_from: str | None) -> tuple[list, list | None]:
    """`--reference-from OLD:NEW`: the images whose name holds OLD, each with its reference
    (the name with OLD replaced by NEW); without it, every image and no references."""
    if not reference_from:
        return list(paths), None
    if ":" not in reference_from:
        raise ValueError("--reference-from takes OLD:NEW, e.g. _test:_temp for DeepPCB")
    old, new = reference_from.split(":", 1)
    paths = [p for p in paths if old in p.name]
    return paths, [p.with_name(p.name.replace(old, new)) for p in paths]


def _cmd_predict(args: argparse.Namespace) -> int:
    """Every input inspected, streamed to CSV / JSONL; a file that cannot be inspected (not
    an image, corrupt, over the pixel limit) gets a row saying why, and the run goes on."""
    from tqdm.auto import tqdm

    from defectkit.data.images import without_path
    from defectkit.predictions import CocoWriter, PredictionWriter
    from defectkit.runtime.inspector import Inspector, expand_inputs

    if args.engine == "ray":
        return _predict_on_ray(args)
    inspector = Inspector(args.bundle, backend=args.backend)
    out = Path(args.out)
    errors: list[dict[str, str]] = []
    count = 0
    paths, references = with_references(expand_inputs(args.inputs), args.reference_from)

    def flush(writer: PredictionWriter) -> None:
        while errors:
            error = errors.pop(0)
            reason = without_path(error["error"], Path(error["image"]))
            writer.write_error(error["image"], reason)
            print(f"skipped {error['image']}: {reason}", file=sys.stderr)

    # the boxes of models that give them (detect); other models' files list no annotations
    coco = CocoWriter(Path(args.coco), inspector.classes) if args.coco else None
    with PredictionWriter(out, inspector.score_names()) as writer:
        for prediction in tqdm(
            inspector.predict(paths, args.batch_size, errors, references),
            desc="predict",
            unit="img",
            disable=None,
        ):
            flush(writer)
            writer.write(prediction)
            if coco is not None:
                coco.add(prediction)
            count += 1
            if args.overlays and prediction.heat_map is not None:
                from defectkit.report import save_overlay

                name = f"{count:06d}_{Path(prediction.image).stem}.png"
                save_overlay(
                    Path(prediction.image), prediction.heat_map, Path(args.overlays) / name
                )
            if args.masks and prediction.mask is not None:
                from PIL import Image

                Path(args.masks).mkdir(parents=True, exist_ok=True)
                name = f"{count:06d}_{Path(prediction.image).stem}.png"
                Image.fromarray(prediction.mask.astype("uint8") * 255).save(Path(args.masks) / name)
        flush(writer)
        skipped = writer.rows - count
    print(f"{count} image(s) -> {out}; {skipped} skipped (their rows give the reason)")
    if coco is not None:
        coco.close()
        print(f"boxes of {count} image(s) -> {args.coco} (COCO JSON)")
    return 0


def _predict_on_ray(args: argparse.Namespace) -> int:
    """`predict --engine ray`: the same rows, from a pool of Inspector actors on Ray."""
    from defectkit.runtime.cluster import predict_with_ray
    from defectkit.runtime.inspector import expand_inputs

    unsupported = [o for o in ("overlays", "masks", "coco") if getattr(args, o)]
    if unsupported:
        raise ValueError(
            f"--{unsupported[0]} is written by the local engine only: drop it, or run "
            "without --engine ray"
        )
    paths, references = with_references(expand_inputs(args.inputs), args.reference_from)
    result = predict_with_ray(
        args.bundle,
        paths,
        args.out,
        references,
        address=args.address,
        actors=args.actors,
        cpus_per_actor=args.cpus_per_actor,
        gpus_per_actor=args.gpus_per_actor,
        batch_size=args.batch_size,
        backend=args.backend,
        progress=True,
    )
    if result["format"] == "parquet":
        print(f"{result['images']} image(s) -> {result['output']} (Parquet files)")
    else:
        print(
            f"{result['inspected']} image(s) -> {result['output']}; {result['skipped']} skipped "
            "(their rows give the reason)"
        )
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    """ONNX export into the bundle, then (given images) a check against PyTorch."""
    from defectkit.runtime.export import check_export, export_onnx
    from defectkit.runtime.inspector import expand_inputs

    record = export_onnx(args.bundle, opset=args.opset)
    print(f"exported {record['file']} (opset {record['opset']}) in {record['export_seconds']} s")
    if not args.check:
        print("not checked: give --check IMAGES to compare it with PyTorch on real images")
        return 0
    images, references = with_references(expand_inputs(args.check), args.reference_from)
    limit = args.check_limit
    result = check_export(args.bundle, images[:limit], references and references[:limit])
    verdict = (
        "decisions agree"
        if not result["decisions_disagree"]
        else (f"{len(result['decisions_disagree'])} decisions differ")
    )
    if result["ties_at_threshold"]:
        verdict += f" ({len(result['ties_at_threshold'])} at the threshold within the tolerance)"
    print(
        f"checked on {result['images']} images: {verdict}, largest score difference "
        f"{result['max_score_difference']:.2e} (tolerance {result['tolerance']:.0e})"
    )
    if not result["passed"]:
        print("the ONNX model does not reproduce PyTorch: do not deploy it", file=sys.stderr)
        return 1
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from defectkit.serve import serve

    serve(
        args.bundle,
        host=args.host,
        port=args.port,
        backend=args.backend,
        workers=args.workers,
        max_upload_mb=args.max_upload_mb,
        feedback=args.feedback,
        candidate=args.candidate,
        drift_window=args.drift_window,
        psi_limit=args.psi_limit,
    )
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    """Train and evaluate a classifier on data that needs no download: ELPV (pip) or synthetic."""
    import defectkit

    overrides = [f"out_dir={args.out}", *args.set]
    if args.synthetic:
        from defectkit.data.synthetic import make_classify_set

        root = make_classify_set(Path(args.out) / "synthetic-data", per_class=40, size=96)
        config = load_config("synthetic_classify", [f"data.root={root}", *overrides])
    else:
        config = load_config("elpv_demo", overrides)
    print(f"demo: {config.task} on {config.data.root}")
    run_dir, result = defectkit.train(config)
    _print_result(result, run_dir, config.task)
    _run_baseline(run_dir)
    return 0


def _cmd_backbones(args: argparse.Namespace) -> int:
    """Each backbone with offline weights: where its file was found, or where to put it."""
    from defectkit.models.backbones import list_backbones, locate_weights

    names = list_backbones()
    width = max(map(len, names))
    for name in names:
        print(f"{name:{width}s}  {locate_weights(name)}")
    print(
        "\nAny other timm name trains too (from scratch, or with --set model.weights=FILE). "
        "Files may also go in $DEFECTKIT_WEIGHTS_DIR."
    )
    return 0


def _cmd_recipes(args: argparse.Namespace) -> int:
    """The shipped recipes, each with the first line of its own description."""
    from defectkit.config import list_recipes

    recipes = list_recipes()
    width = max(map(len, recipes))
    for name, line in recipes.items():
        print(f"{name:{width}s}  {line}")
    print(
        "\ndefectkit config show NAME prints every setting of one; "
        "defectkit train --config NAME runs it."
    )
    return 0


def _cmd_config_show(args: argparse.Namespace) -> int:
    """Every key of a recipe (or the defaults) with its value and what it means."""
    from defectkit.config import describe_config, load_config
    from defectkit.tasks import get_task, list_tasks

    config = load_config(args.recipe, args.set)
    print(describe_config(config, {name: get_task(name).sections for name in list_tasks()}))
    return 0


def _parser(commands, name: str, help: str, description: str | None = None):
    """A subcommand whose --help shows every argument's default."""
    return commands.add_parser(
        name,
        help=help,
        description=description or help,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )


def _set_option(parser: argparse.ArgumentParser, example: str = "train.epochs=5") -> None:
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a config value, e.g. --set {example} (repeatable; "
        "`defectkit config show` lists the keys)",
    )


def build_parser() -> argparse.ArgumentParser:
    from defectkit.tasks import list_tasks

    parser = argparse.ArgumentParser(
        prog="defectkit",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging; tracebacks")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = _parser(commands, "data", "look at a dataset folder").add_subparsers(
        dest="data_command", required=True, metavar="SUBCOMMAND"
    )
    inspect = _parser(
        data, "inspect", "counts, sizes, unreadable files, duplicates, look-alikes, a grid"
    )
    inspect.add_argument("path", help="the dataset folder")
    inspect.add_argument(
        "--format", default="auto", help="a layout from `defectkit data formats`, or auto-detect"
    )
    inspect.add_argument(
        "--label-mode", default="default", help="reader-specific, e.g. ELPV binary or 4class"
    )
    inspect.add_argument("--labels", metavar="PATH", help=LABELS_HELP)
    inspect.add_argument(
        "--out",
        help="folder for summary.json and samples.png (default: runs/data-inspect-<folder>)",
    )
    inspect.set_defaults(func=_cmd_data_inspect)
    _parser(data, "formats", "the layouts defectkit reads").set_defaults(func=_cmd_data_formats)

    train = _parser(commands, "train", "train and evaluate a model; writes a run folder")
    train.add_argument(
        "--config", help="a YAML file or a shipped recipe name (`defectkit recipes` lists them)"
    )
    train.add_argument(
        "--task",
        choices=list_tasks(),
        help="with --data and no recipe: settings drawn from the data and the device",
    )
    train.add_argument(
        "--data", metavar="PATH", help="the dataset folder (sizes, classes, epochs drawn from it)"
    )
    train.add_argument("--labels", metavar="PATH", help=LABELS_HELP + " (= --set data.labels=PATH)")
    train.add_argument(
        "--folds",
        choices=("one", "all"),
        default="one",
        help="all: with split.method=kfold, train every fold and report mean, std and pooled",
    )
    train.add_argument(
        "--dry-run",
        action="store_true",
        help="print the data summary and the resolved, checked settings; train nothing",
    )
    _set_option(train)
    train.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue an interrupted run from its last checkpoint (its own config; only "
        "speed settings such as train.threads may change)",
    )
    train.set_defaults(func=_cmd_train)

    curve = _parser(
        commands,
        "learning-curve",
        "how many images do I need: accuracy against training images per class",
        "Train a classifier on k images per class (nested subsets, --repeats seeds) for each "
        "k, always on the same test images; plot test accuracy (mean, spread) against k and "
        "each class's recall against its training images. Run it again to go on after an "
        "interruption (finished runs are kept).",
    )
    curve.add_argument("--config", help="a classify recipe (e.g. neu_fewshot) or YAML file")
    curve.add_argument(
        "--task",
        choices=list_tasks(),
        help="with --data and no recipe: settings drawn from it (a task that learning-curve "
        "trains: classify)",
    )
    curve.add_argument("--data", metavar="PATH", help="the dataset folder")
    curve.add_argument("--shots", default="1,5,10,20,50", help="the k values, comma-separated")
    curve.add_argument("--repeats", type=int, default=5, help="seeds (subsets) per k")
    curve.add_argument(
        "--keep-models",
        action="store_true",
        help="keep each run's bundle and checkpoints (removed once it has finished otherwise)",
    )
    _set_option(curve)
    curve.set_defaults(func=_cmd_learning_curve)

    recipes = _parser(commands, "recipes", "the shipped recipes, one line each")
    recipes.set_defaults(func=_cmd_recipes)
    config = _parser(commands, "config", "look at run settings").add_subparsers(
        dest="config_command", required=True, metavar="SUBCOMMAND"
    )
    show = _parser(config, "show", "every key of a recipe with its value and meaning")
    show.add_argument(
        "recipe", nargs="?", help="a recipe name or YAML file (default: the built-in defaults)"
    )
    _set_option(show)
    show.set_defaults(func=_cmd_config_show)

    calibrate = _parser(
        commands,
        "calibrate",
        "choose a finished run's thresholds again (another rule or target); no retraining",
        "Make a finished run's decisions again from its trained model: its thresholds chosen "
        "on its own validation images by the rules given with --set (eval.threshold_rule / "
        "eval.target, detect.box_rule / detect.box_target, anomaly.false_alarm_rate, box "
        "post-processing, eval.tta), its test images evaluated, its bundle, report and "
        "monitoring baseline rewritten. The weights are not touched; the evaluation it "
        "replaces is kept in RUN/before/<n>/.",
    )
    calibrate.add_argument("run", help="a finished run folder (metrics.json, bundle/)")
    _set_option(calibrate, "detect.box_rule=precision")
    calibrate.set_defaults(func=_cmd_calibrate)

    evaluate = _parser(commands, "eval", "evaluate a bundle on a labelled dataset")
    evaluate.add_argument("bundle", help="a bundle folder, or a run folder holding bundle/")
    _labelled_data_options(evaluate, "the labelled dataset folder")
    evaluate.add_argument("--out", default="eval.json", help="where the metrics go (JSON)")
    evaluate.set_defaults(func=_cmd_eval)

    predict = _parser(commands, "predict", "label images or folders with a bundle")
    predict.add_argument("bundle", help="a bundle folder, or a run folder holding bundle/")
    predict.add_argument("inputs", nargs="+", help="image files and folders (walked recursively)")
    predict.add_argument(
        "--out",
        default="predictions.csv",
        help=".csv or .jsonl; one row per input (--engine ray: or a folder for Parquet files)",
    )
    predict.add_argument(
        "--engine",
        default="local",
        choices=("local", "ray"),
        help="ray: a pool of Inspector actors on a Ray cluster (pip install 'defectkit[ray]')",
    )
    predict.add_argument(
        "--address", help="--engine ray: the cluster (e.g. auto, ray://head:10001); default local"
    )
    predict.add_argument("--actors", type=int, default=2, help="--engine ray: Inspector actors")
    predict.add_argument(
        "--cpus-per-actor", type=float, default=1, help="--engine ray: CPUs (threads) per actor"
    )
    predict.add_argument(
        "--gpus-per-actor", type=float, default=0, help="--engine ray: GPUs per actor (CUDA)"
    )
    predict.add_argument("--batch-size", type=int, default=16, help="images per forward pass")
    predict.add_argument(
        "--backend", default="torch", choices=("torch", "onnx"), help="onnx: run `export` first"
    )
    predict.add_argument(
        "--overlays", metavar="DIR", help="anomaly and segment models: heat-map overlays here"
    )
    predict.add_argument("--masks", metavar="DIR", help="segment models: the masks as PNG here")
    predict.add_argument(
        "--coco", metavar="FILE", help="detect models: every box as COCO JSON (with scores)"
    )
    predict.add_argument(
        "--reference-from",
        metavar="OLD:NEW",
        help="models with a reference: each image's reference is its file name with OLD "
        "replaced by NEW (DeepPCB: _test:_temp); images without OLD in their name are skipped",
    )
    predict.set_defaults(func=_cmd_predict)

    export = _parser(commands, "export", "write model.onnx into a bundle and check it")
    export.add_argument("bundle", help="a bundle folder, or a run folder holding bundle/")
    export.add_argument(
        "--check", nargs="+", metavar="IMAGES", help="images or folders to compare PyTorch on"
    )
    export.add_argument("--check-limit", type=int, default=64, help="images checked at most")
    export.add_argument(
        "--reference-from", metavar="OLD:NEW", help="models with a reference: as for predict"
    )
    export.add_argument("--opset", type=int, default=18, help="ONNX opset version")
    export.set_defaults(func=_cmd_export)

    serve = _parser(commands, "serve", "HTTP service + operator page for a bundle")
    serve.add_argument("bundle", help="a bundle folder, or a run folder holding bundle/")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on")
    serve.add_argument(
        "--backend", default="torch", choices=("torch", "onnx"), help="onnx: run `export` first"
    )
    serve.add_argument("--workers", type=int, default=2, help="images inspected at once")
    serve.add_argument("--max-upload-mb", type=float, default=20.0, help="largest file accepted")
    serve.add_argument(
        "--feedback", metavar="DIR", help="feedback store (default: feedback/ beside the bundle)"
    )
    serve.add_argument(
        "--candidate", metavar="BUNDLE", help="shadow mode: run this bundle too, log disagreements"
    )
    serve.add_argument(
        "--drift-window", type=int, default=500, help="recent images compared with the baseline"
    )
    serve.add_argument("--psi-limit", type=float, default=0.25, help="drift warning above this PSI")
    serve.set_defaults(func=_cmd_serve)

    baseline = _parser(
        commands, "baseline", "write a bundle's drift baseline (training runs write their own)"
    )
    baseline.add_argument("bundle", help="a run folder (its split is used), or a bundle folder")
    baseline.add_argument(
        "--calibration", nargs="+", metavar="IMAGES", help="validation images or folders"
    )
    baseline.add_argument("--training", nargs="+", metavar="IMAGES", help="training images")
    baseline.add_argument(
        "--reference-from", metavar="OLD:NEW", help="models with a reference: as for predict"
    )
    baseline.set_defaults(func=_cmd_baseline)

    compare = _parser(commands, "compare", "two bundles on one labelled set, side by side")
    compare.add_argument("bundle_a", help="the current model (a bundle or run folder)")
    compare.add_argument("bundle_b", help="the candidate")
    _labelled_data_options(compare, "the labelled (golden) dataset folder")
    compare.add_argument(
        "--backend", default="torch", choices=("torch", "onnx"), help="onnx: run `export` first"
    )
    compare.add_argument("--out", default="compare", help="folder for report.html, compare.json")
    compare.set_defaults(func=_cmd_compare)

    review = _parser(commands, "review", "operator feedback: overturned calls, export a dataset")
    review.add_argument("store", help="a feedback folder (feedback/ beside the served bundle)")
    review.add_argument("--export", metavar="DIR", help="write the answers as a dataset here")
    review.set_defaults(func=_cmd_review)

    demo = _parser(commands, "demo", "train on ELPV solar cells (pip) or synthetic data")
    demo.add_argument("--synthetic", action="store_true", help="procedural images, no download")
    demo.add_argument("--out", default="runs", help="folder for the run folder")
    _set_option(demo)
    demo.set_defaults(func=_cmd_demo)

    backbones = _parser(
        commands, "backbones", "backbones with offline weights: where each file is or goes"
    )
    backbones.add_argument(
        "--find", action="store_true", help="(kept for old scripts: the files are always looked up)"
    )
    backbones.set_defaults(func=_cmd_backbones)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s"
    )
    try:
        return args.func(args)
    except KeyboardInterrupt as interrupt:
        print(f"\n{interrupt or 'interrupted'}", file=sys.stderr)
        return 130
    except (ConfigError, ValueError, FileNotFoundError, FileExistsError, RuntimeError) as error:
        if args.verbose:
            raise
        print(f"defectkit: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
