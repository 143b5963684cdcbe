"""A timm backbone with a classification head, and the freezing policies of transfer learning."""

from __future__ import annotations

import torch
from torch import nn

from defectkit.config import ModelConfig
from defectkit.data.transforms import view
from defectkit.models.backbones import Preprocessing, create_backbone, preprocessing_for

STRATEGIES = ("scratch", "frozen", "finetune", "freeze_then_unfreeze", "fewshot")


def build_classifier(
    config: ModelConfig, num_classes: int, *, pretrained: bool
) -> tuple[nn.Module, dict, Preprocessing]:
    """(model, where its weights came from, the preprocessing its weights expect)."""
    model, info = create_backbone(
        config.backbone,
        num_classes,
        pretrained=pretrained,
        weights=config.weights,
        weights_sha256=config.weights_sha256,
        drop_rate=config.drop_rate,
    )
    return model, info, preprocessing_for(config.backbone, model)


def class_probabilities(model: nn.Module, images: torch.Tensor, views: int = 1) -> torch.Tensor:
    """Softmax class probabilities of (B, C, S, S) images; with views > 1 (test-time
    augmentation) the mean over the first `views` flips and quarter turns of each image
    (data.transforms.view: 4 = the flips, 8 = with the quarter turns)."""
    total = model(images).float().softmax(1)
    for j in range(1, views):
        total = total + model(view(images, j)).float().softmax(1)
    return total / views


def head_of(model: nn.Module) -> nn.Module:
    return model.get_classifier()


@torch.no_grad()
def head_at_class_means(head: nn.Linear, features: torch.Tensor, targets: torch.Tensor) -> None:
    """Start a linear head as the nearest-class-mean classifier of `features`: the logit of
    class c is -scale * |x - mean_c|^2 up to a term equal for every class, i.e.
    weight_c = 2 scale mean_c, bias_c = -scale |mean_c|^2. With one to a few images per
    class this is already a good classifier (a prototype network's rule); training the head
    from there refines it instead of starting from chance. `scale` makes the logit gaps of
    a typical feature about 10, a confident but not saturated start."""
    means = torch.stack([features[targets == c].mean(0) for c in range(head.out_features)])
    scale = 10.0 / features.pow(2).sum(1).mean()
    head.weight.copy_(2 * scale * means)
    head.bias.copy_(-scale * means.pow(2).sum(1))


def set_backbone_trainable(model: nn.Module, trainable: bool) -> None:
    """Freeze or unfreeze everything but the head. Frozen layers also keep their batch-norm
    statistics (see `keep_frozen_bn_in_eval`), or the "frozen" features would still drift."""
    head = {id(p) for p in head_of(model).parameters()}
    for parameter in model.parameters():
        parameter.requires_grad = trainable or id(parameter) in head


def keep_frozen_bn_in_eval(model: nn.Module) -> None:
    """Call after model.train(): batch norms whose parameters are frozen stop updating."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                module.eval()


def parameter_groups(
    model: nn.Module, lr: float, head_lr_mult: float, weight_decay: float
) -> list[dict]:
    """Backbone at lr, head at lr * head_lr_mult; no weight decay on norms and biases.
    Frozen parameters stay in the groups (their grads are None, so optimisers skip them) so
    that unfreezing later needs no new optimiser and a resumed run restores the same state."""
    head = {id(p) for p in head_of(model).parameters()}
    groups: dict[tuple[bool, bool], list] = {}
    for parameter in model.parameters():
        key = (id(parameter) in head, parameter.ndim <= 1)
        groups.setdefault(key, []).append(parameter)
    return [
        {
            "params": params,
            "lr": lr * (head_lr_mult if is_head else 1.0),
            "weight_decay": 0.0 if no_decay else weight_decay,
            "name": f"{'head' if is_head else 'backbone'}",
        }
        for (is_head, no_decay), params in sorted(groups.items())
    ]
