"""The classify task: images labelled by defect type (or OK/NG) -> label and per-class scores.

pipeline.py runs one training run, evaluate.py scores a model on labelled images, deploy.py
is what its bundle needs on the line; registering the task imports deploy.py alone (the
pipeline's run_classify and evaluate_bundle on their first call)."""

from defectkit.tasks import register_task, task_from
from defectkit.tasks.classify import deploy

TASK = register_task(task_from("classify", deploy))
