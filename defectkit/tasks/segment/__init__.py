"""The segment task: images with pixel masks (optionally an aligned reference) -> defect
mask, regions, OK/NG.

pipeline.py runs one training run, evaluate.py scores a model on labelled images, deploy.py
is what its bundle needs on the line; registering the task imports deploy.py alone (the
pipeline's run_segment and evaluate_bundle on their first call)."""

from defectkit.tasks import register_task, task_from
from defectkit.tasks.segment import deploy

TASK = register_task(task_from("segment", deploy))
