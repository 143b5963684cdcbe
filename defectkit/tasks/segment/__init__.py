"""The segment task: images with pixel masks (optionally an aligned reference) -> defect
mask, regions, OK/NG.

pipeline.py runs one training run, evaluate.py scores a model on labelled images, deploy.py
is what its bundle needs on the line; registering the task imports deploy.py alone."""

from defectkit.tasks import register_task, task_from
from defectkit.tasks.segment import deploy

TASK = register_task(
    task_from(
        "segment",
        deploy,
        run="defectkit.tasks.segment.pipeline:run_segment",
        evaluate_bundle="defectkit.tasks.segment.evaluate:evaluate_bundle",
    )
)
