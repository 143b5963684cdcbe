import itertools
from collections import Counter

import pytest
import torch
from torch import nn

from defectkit.config import TrainConfig
from defectkit.engine.losses import FocalLoss, OrdinalLoss, balanced_class_weights, make_loss
from defectkit.engine.train import make_optimizer, make_sampler, make_schedule
from defectkit.models.classifier import parameter_groups, set_backbone_trainable


def test_focal_with_gamma_zero_is_cross_entropy():
    logits, target = torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    assert FocalLoss(0.0)(logits, target) == pytest.approx(
        nn.functional.cross_entropy(logits, target).item(), rel=1e-5
    )


def test_focal_down_weights_easy_examples():
    easy = torch.tensor([[4.0, 0.0]])  # p_true = 0.982
    ce = nn.functional.cross_entropy(easy, torch.tensor([0])).item()
    p = torch.softmax(easy, 1)[0, 0].item()
    assert FocalLoss(2.0)(easy, torch.tensor([0])).item() == pytest.approx((1 - p) ** 2 * ce)


def test_ordinal_loss_makes_a_neighbouring_grade_the_cheaper_mistake():
    """Four grades; the same confidence on the wrong grade costs cross-entropy alike, the
    ordinal loss more the farther that grade is, by the squared distance of the cumulative
    sums worked out by hand."""
    confident = 4.0
    target = torch.tensor([1])
    costs = []
    for wrong in (0, 2, 3):
        logits = torch.zeros(1, 4)
        logits[0, wrong] = confident
        ce = nn.functional.cross_entropy(logits, target).item()
        p = torch.softmax(logits, 1)[0]
        cdf, true = p.cumsum(0), torch.tensor([0.0, 1.0, 1.0, 1.0])
        emd = float(((cdf - true)[:3] ** 2).sum())
        loss = OrdinalLoss(0.5)(logits, target).item()
        assert loss == pytest.approx(ce + 0.5 * emd, rel=1e-5)
        costs.append(loss - ce)  # cross-entropy is the same for the three
    below, above, two_away = costs  # grades 0, 2 and 3 for a true 1
    assert two_away > 1.5 * max(below, above) > 0
    # weight 0 is cross-entropy; a right, confident answer costs almost nothing
    logits, targets = torch.randn(8, 4), torch.arange(8) % 4
    assert OrdinalLoss(0.0)(logits, targets).item() == pytest.approx(
        nn.functional.cross_entropy(logits, targets).item(), rel=1e-5
    )
    assert OrdinalLoss(1.0)(torch.eye(4)[targets] * 30, targets).item() < 1e-6


def test_ordinal_loss_weights_classes_like_cross_entropy():
    logits, targets = torch.randn(10, 3), torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 2, 2])
    weights = balanced_class_weights(targets.tolist(), 3)
    weighted = make_loss(
        "ordinal", weight=weights, label_smoothing=0.0, focal_gamma=2.0, ordinal_weight=0.0
    )
    expected = nn.functional.cross_entropy(logits, targets, weight=weights)
    assert weighted(logits, targets).item() == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(ValueError, match="ce, focal, ordinal"):
        make_loss("hinge", weight=None, label_smoothing=0.0, focal_gamma=2.0)


def test_balanced_weights_by_hand():
    # 6 samples, 3 of class 0, 2 of class 1, 1 of class 2: n / (k n_c)
    weights = balanced_class_weights([0, 0, 0, 1, 1, 2], 3)
    assert weights.tolist() == pytest.approx([6 / 9, 6 / 6, 6 / 3])


def test_samplers_balance_classes():
    targets = [0] * 90 + [1] * 10
    over = Counter(targets[i] for i in make_sampler("oversample", targets, 0))
    assert len(list(make_sampler("oversample", targets, 0))) == 100
    assert 30 < over[1] < 70
    under = list(make_sampler("undersample", targets, 0))
    assert Counter(targets[i] for i in under) == {0: 10, 1: 10}
    assert make_sampler("none", targets, 0) is None
    with pytest.raises(ValueError, match="unknown train.sampler"):
        make_sampler("smote", targets, 0)


def test_head_gets_its_own_learning_rate_and_frozen_params_get_no_grad():
    import timm

    model = timm.create_model("resnet18", num_classes=2)
    groups = parameter_groups(model, lr=0.01, head_lr_mult=10, weight_decay=0.1)
    head = [g for g in groups if g["name"] == "head"]
    assert all(g["lr"] == pytest.approx(0.1) for g in head)
    assert {id(p) for g in head for p in g["params"]} == {id(p) for p in model.fc.parameters()}
    assert all(g["weight_decay"] == 0 for g in groups if g["params"][0].ndim <= 1)
    set_backbone_trainable(model, False)
    assert not model.conv1.weight.requires_grad and model.fc.weight.requires_grad


@pytest.mark.parametrize("schedule", ["cosine", "step", "exponential", "constant"])
def test_schedules_start_at_the_base_rate_and_do_not_grow(schedule):
    config = TrainConfig(schedule=schedule, epochs=4, step_size=1, gamma=0.5)
    optimizer = make_optimizer([{"params": [nn.Parameter(torch.zeros(1))]}], config)
    sched = make_schedule(optimizer, config, steps_per_epoch=2)
    rates = []
    for _ in range(8):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        sched.step()
    assert rates[0] == pytest.approx(config.lr)
    assert all(b <= a + 1e-12 for a, b in itertools.pairwise(rates))
    if schedule == "step":
        assert rates[2] == pytest.approx(config.lr * 0.5)


def test_warmup_then_bad_schedule_name():
    config = TrainConfig(warmup_epochs=1, epochs=2)
    optimizer = make_optimizer([{"params": [nn.Parameter(torch.zeros(1))]}], config)
    make_schedule(optimizer, config, steps_per_epoch=4)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(config.lr / 4)
    with pytest.raises(ValueError, match="unknown train.schedule"):
        make_schedule(optimizer, TrainConfig(schedule="wavy"), 2)


def test_accumulated_gradients_step_like_one_bigger_batch():
    """Two batches of 4 added up (each loss halved) give the step of one batch of 8, and the
    schedule steps once per optimiser step."""
    import torch
    from torch import nn

    from defectkit.engine.train import optimizer_steps, train_one_epoch

    generator = torch.Generator().manual_seed(0)
    inputs, targets = torch.randn(8, 5, generator=generator), torch.tensor([0, 1] * 4)
    results = []
    for batch, accumulate in ((8, 1), (4, 2)):
        model = nn.Linear(5, 2)
        with torch.no_grad():
            model.weight.copy_(torch.arange(10.0).reshape(2, 5) / 10)
            model.bias.zero_()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        loader = [(inputs[i : i + batch], targets[i : i + batch]) for i in range(0, 8, batch)]
        train_one_epoch(
            model,
            loader,
            nn.CrossEntropyLoss(),
            optimizer,
            schedule,
            torch.device("cpu"),
            accumulate=accumulate,
        )
        results.append((model.weight.detach().clone(), schedule.last_epoch))
    assert torch.allclose(results[0][0], results[1][0], rtol=1e-5, atol=1e-7)
    assert results[0][1] == results[1][1] == 1  # one optimiser step each
    assert optimizer_steps(9, 2) == 5 and optimizer_steps(8, 1) == 8
