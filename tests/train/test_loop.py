"""train_one_epoch on a tiny model: what one epoch does to frozen and trainable stages."""

from __future__ import annotations

import torch
from torch import nn

from dronseg_edge.models import backbone_stages, build_model, freeze_backbone_stages, keep_frozen_norms_in_eval
from dronseg_edge.train.loop import StepContext, evaluate, train_one_epoch
from dronseg_edge.metrics import SegmentationMetrics


def _norm(stage: list[nn.Module]) -> nn.BatchNorm2d:
    return next(m for module in stage for m in module.modules() if isinstance(m, nn.BatchNorm2d))


def test_frozen_stage_norm_statistics_stay_put_over_an_epoch():
    torch.manual_seed(0)
    model = build_model("lraspp_mobilenet_v3_large", num_classes=3, weights="none")
    freeze_backbone_stages(model, 2)
    model.train()
    keep_frozen_norms_in_eval(model)
    generator = torch.Generator().manual_seed(0)
    batches = [(torch.randint(0, 256, (2, 3, 64, 96), dtype=torch.uint8, generator=generator),
                torch.randint(0, 3, (2, 64, 96), dtype=torch.uint8, generator=generator)) for _ in range(2)]
    ctx = StepContext(torch.device("cpu"), None)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    scheduler = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    # A validation pass between epochs leaves the model in eval mode, as in fit.
    evaluate(model, criterion, batches[:1], ctx, SegmentationMetrics(num_classes=3), show_progress=False)

    stages = backbone_stages(model)
    frozen, trained = _norm(stages[0]), _norm(stages[-1])
    before = {name: (bn.running_mean.clone(), bn.running_var.clone()) for name, bn in (("frozen", frozen), ("trained", trained))}
    train_one_epoch(model, criterion, optimizer, scheduler, scaler, batches, ctx, show_progress=False)

    assert torch.equal(frozen.running_mean, before["frozen"][0]) and torch.equal(frozen.running_var, before["frozen"][1])
    assert not torch.equal(trained.running_mean, before["trained"][0])
    assert not torch.equal(trained.running_var, before["trained"][1])
