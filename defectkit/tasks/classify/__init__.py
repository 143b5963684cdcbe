"""The classify task: images labelled by defect type (or OK/NG) -> label and per-class scores.

pipeline.py runs one training run, evaluate.py scores a model on labelled images, deploy.py
is what its bundle needs on the line; registering the task imports deploy.py alone."""

from defectkit.tasks import register_task, task_from
from defectkit.tasks.classify import deploy

TASK = register_task(
    task_from(
        "classify",
        deploy,
        run="defectkit.tasks.classify.pipeline:run_classify",
        evaluate_bundle="defectkit.tasks.classify.evaluate:evaluate_bundle",
    )
)
