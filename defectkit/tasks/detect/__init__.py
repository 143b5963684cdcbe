"""The detect task: images with boxes -> labelled boxes, OK/NG.

pipeline.py runs one training run, evaluate.py scores a model on labelled images, deploy.py
is what its bundle needs on the line; registering the task imports deploy.py alone (the
pipeline's run_detect and evaluate_bundle on their first call)."""

from defectkit.tasks import register_task, task_from
from defectkit.tasks.detect import deploy

TASK = register_task(task_from("detect", deploy))
