"""The anomaly task: defect-free images only -> anomaly score, heat map, regions, OK/NG.

pipeline.py runs one training run, evaluate.py scores a model on labelled images, deploy.py
is what its bundle needs on the line; registering the task imports deploy.py alone (the
pipeline's run_anomaly and evaluate_bundle on their first call)."""

from defectkit.tasks import register_task, task_from
from defectkit.tasks.anomaly import deploy

TASK = register_task(task_from("anomaly", deploy))
