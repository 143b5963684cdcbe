"""The shared epoch loop's early stopping, on scripted validation scores: it stops exactly
`early_stopping` epochs after the best one, keeps that epoch's weights, and runs every
epoch when the scores keep improving or early stopping is off."""

import pytest
import torch
from torch import nn

from defectkit.engine.fit import Fit, fit
from defectkit.engine.train import load_checkpoint


def _loop(scores: list[float], patience: int) -> Fit:
    model = nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    seen = iter(scores)

    def run_epoch(epoch: int) -> dict[str, float]:
        with torch.no_grad():
            model.bias.fill_(epoch)  # the weights say which epoch they are from
        return {"train_loss": 1.0}

    return Fit(
        task="test",
        model=model,
        optimizer=optimizer,
        schedule=schedule,
        epochs=len(scores),
        run_epoch=run_epoch,
        validate=lambda: {"val_score": next(seen)},
        score=lambda row: row["val_score"],
        line=lambda row: f"epoch {row['epoch']}",
        early_stopping=patience,
    )


@pytest.mark.parametrize(
    ("scores", "patience", "epochs_run", "best_epoch"),
    [
        ([0.5, 0.7, 0.6, 0.65, 0.9, 0.95], 2, 4, 1),  # 0.6, 0.65: two epochs without a gain
        ([0.5, 0.7, 0.6, 0.65, 0.9, 0.95], 3, 6, 5),  # 0.9 comes in time
        ([0.5, 0.7, 0.6, 0.65, 0.9, 0.95], 0, 6, 5),  # off
        ([0.9, 0.1, 0.1, 0.1], 1, 2, 0),
    ],
)
def test_early_stopping_stops_after_the_set_epochs_without_a_better_score(
    scores, patience, epochs_run, best_epoch, tmp_path
):
    loop = _loop(scores, patience)
    best = fit(loop, tmp_path, resume=False)
    assert len(loop.history) == epochs_run
    assert [row["val_score"] for row in loop.history] == scores[:epochs_run]
    kept = load_checkpoint(best)
    assert kept["epoch"] == best_epoch
    assert kept["model"]["bias"].item() == best_epoch
