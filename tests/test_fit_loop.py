"""The shared epoch loop's early stopping, on scripted validation scores: it stops exactly
`early_stopping` epochs after the best one, keeps that epoch's weights, and runs every
epoch when the scores keep improving or early stopping is off. Its moving average of the
weights (train.ema) follows each step by the warmed-up decay and is what validation and
best.pt see."""

import pytest
import torch
from torch import nn

from defectkit.engine.average import WeightAverage, warmed_decay
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


def test_the_weight_average_follows_each_step_with_its_warmed_up_decay():
    """Each optimiser step moves the average toward the new weights by 1 - decay, where the
    decay is min(train.ema, (1 + n) / (10 + n)) at the n-th update and the first copies."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    average = WeightAverage(model, optimizer, decay=0.5)
    expected = None
    for _ in range(5):
        loss = model(torch.randn(8, 3)).square().mean()
        loss.backward()
        optimizer.step()  # the hook updates the average
        optimizer.zero_grad()
        current = {k: v.clone() for k, v in model.state_dict().items()}
        if expected is None:
            expected = current
        else:
            kept = warmed_decay(0.5, average.updates - 1)
            expected = {
                k: kept * expected[k] + (1 - kept) * v if v.is_floating_point() else v
                for k, v in current.items()
            }
    assert average.updates == 5
    assert warmed_decay(0.5, 1) == pytest.approx(2 / 11) and warmed_decay(0.5, 100) == 0.5
    for key, value in average.weights().items():
        torch.testing.assert_close(value, expected[key], rtol=1e-5, atol=1e-6)
    # the batch-norm statistics are averaged too, and its counter follows the model
    assert average.weights()["1.num_batches_tracked"].item() == 5
    assert not torch.allclose(average.weights()["1.running_mean"], model[1].running_mean)


def test_with_ema_validation_and_best_pt_see_the_average_and_training_goes_on(tmp_path):
    """train.ema: validation runs on the averaged weights, best.pt keeps them, and the model
    trains on with its own weights (last.pt keeps both, for an exact resume)."""
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    seen: list[float] = []

    def run_epoch(epoch: int) -> dict[str, float]:
        for _ in range(3):  # loss -w: each step adds 1 to the weight
            (-model.weight.sum()).backward()
            optimizer.step()
            optimizer.zero_grad()
        return {"train_loss": 0.0}

    def validate() -> dict[str, float]:
        seen.append(model.weight.item())
        return {"val_score": model.weight.item()}

    loop = Fit(
        task="test",
        model=model,
        optimizer=optimizer,
        schedule=schedule,
        epochs=2,
        run_epoch=run_epoch,
        validate=validate,
        score=lambda row: row["val_score"],
        line=lambda row: f"epoch {row['epoch']}",
        ema=0.9,
    )
    best = fit(loop, tmp_path, resume=False)
    # weights 1..6 after the six steps; the average by hand with the warmed-up decay
    average = 1.0
    for n, weight in zip(range(1, 6), range(2, 7), strict=True):
        kept = warmed_decay(0.9, n)
        average = kept * average + (1 - kept) * weight
    assert model.weight.item() == 6.0  # the training weights, restored after validating
    assert seen[-1] == pytest.approx(average, rel=1e-6) and seen[-1] < 6.0
    assert load_checkpoint(best)["model"]["weight"].item() == pytest.approx(average, rel=1e-6)
    last = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert last["model"]["weight"].item() == 6.0 and last["ema"]["n_averaged"].item() == 6
    assert not optimizer._optimizer_step_post_hooks  # the loop removed its hook
