"""detlab.training.optim: the learning-rate schedule and the weight-decay groups against hand-computed values."""

import math

import pytest
import torch
from torch import nn

from detlab.config import compose_train
from detlab.training.optim import configure_optimizer, lr_factor, param_groups


def test_linear_warmup_then_cosine():
    f = lr_factor(total_steps=110, name="cosine", warmup_steps=10, warmup_factor=0.001)
    assert f(0) == pytest.approx(0.001)
    assert f(5) == pytest.approx(0.001 * 0.5 + 0.5)
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(110) == pytest.approx(0.0, abs=1e-12)


def test_step_decay_at_fractions_of_the_run():
    f = lr_factor(total_steps=90, name="step", warmup_steps=0, milestones=(0.5, 0.8), gamma=0.1)
    assert [f(0), f(44), f(45), f(71), f(72), f(89)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])


@pytest.mark.parametrize(("setting", "key"), [
    ({"name": "poly"}, "optim.scheduler.name='poly'"),
    ({"warmup_steps": -1}, "optim.scheduler.warmup_steps=-1"),        # before: taken, a schedule that never warms
    ({"warmup_factor": -1.0}, "optim.scheduler.warmup_factor=-1.0"),  # before: negative learning rates
    ({"gamma": 1.5}, "optim.scheduler.gamma=1.5"),                    # before: a growing learning rate
    ({"milestones": [0.9, 0.5]}, r"optim.scheduler.milestones=\[0.9, 0.5\]"),
])
def test_a_schedule_that_cannot_be_meant_names_its_key(setting, key):
    with pytest.raises(ValueError, match=key):
        lr_factor(total_steps=10, **setting)


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.GroupNorm(2, 4), nn.Flatten(), nn.LazyLinear(2))


def test_weight_decay_on_kernels_only():
    net = tiny_net()
    net(torch.zeros(1, 3, 5, 5))  # materialise the lazy layer
    net[0].weight.requires_grad_(False)  # frozen parameters are left out
    decay, no_decay = param_groups(net, {})
    names = {id(p): name for name, p in net.named_parameters()}
    assert sorted(names[id(p)] for p in decay["params"]) == ["4.weight"]
    assert sorted(names[id(p)] for p in no_decay["params"]) == ["0.bias", "1.bias", "1.weight", "2.bias", "2.weight", "4.bias"]
    assert no_decay["weight_decay"] == 0.0 and "weight_decay" not in decay


@pytest.mark.parametrize("decay_all", [False, True])
@pytest.mark.parametrize("optim", ["adamw", "sgd"])
def test_configured_step_decays_kernels_and_not_norms_or_biases(optim, decay_all):
    """One step with zero gradients: only weight decay moves a parameter. AdamW (decoupled) multiplies a kernel by
    1 - lr * wd; SGD's decay is a gradient wd * p, so the kernel moves by -lr * wd * p (momentum's first step adds
    nothing). Norms and biases stay as they are, unless optim.decay_norms_and_biases (torchvision's references:
    every parameter). Large lr and decay, no warm-up: a 1% change, far above rounding."""
    cfg = compose_train([f"optim={optim}", "optim.optimizer.fused=false", "optim.optimizer.lr=0.1",
                         "optim.optimizer.weight_decay=0.1", "optim.scheduler.warmup_steps=0",
                         f"optim.decay_norms_and_biases={decay_all}"])
    net = tiny_net()
    net(torch.zeros(1, 3, 5, 5))
    before = {name: p.detach().clone() for name, p in net.named_parameters()}
    configured = configure_optimizer(cfg.optim, net, total_steps=1000)
    optimizer = configured["optimizer"]
    lr, wd = 0.1, 0.1
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx([lr] * (1 if decay_all else 2))
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for name, p in net.named_parameters():
        expected = before[name] * (1 - lr * wd) if p.ndim > 1 or decay_all else before[name]
        torch.testing.assert_close(p.detach(), expected, rtol=1e-6, atol=1e-9, msg=name)
    assert configured["lr_scheduler"]["interval"] == "step"


@pytest.mark.parametrize("optim", ["adamw", "sgd"])
def test_a_fused_optimizer_clips_under_mixed_precision(tmp_path, optim):
    """conf/optim's fused optimizers under bf16-mixed (detlab's mixed precision on a CPU; trainer=gpu's 16-mixed takes
    the same path) with trainer.gradient_clip_val: Lightning refused to clip a fused optimizer's gradients there, a
    RuntimeError at the first step. One SGD step at lr 1, no momentum or decay, moves the weights by the clipped
    gradient: a change whose norm is the clip value (the raw gradient's norm is far above it); AdamW's first moment
    holds it (the test named clipping, and checked only that AdamW stepped)."""
    import pytorch_lightning as pl

    from tests.conftest import TINY, detection_module, make_batch

    clip = 0.1  # the gradient norm is about 2.5; a change well above float32 rounding of the weights
    # cosine: factor 1 at step 0 (the step schedule's milestones of a one-step run fall on step 0)
    settings = ["optim.optimizer.lr=1.0", "optim.optimizer.weight_decay=0.0", "optim.scheduler.warmup_steps=0",
                "optim.scheduler.name=cosine"]
    if optim == "sgd":
        settings.append("optim.optimizer.momentum=0.0")
    module = detection_module(tmp_path, [*TINY, f"optim={optim}", *settings]).train()
    assert module.optim_cfg.optimizer.fused is True  # the config's own choice
    batch = make_batch(torch.tensor([[[8.0, 8.0, 40.0, 40.0]], [[20.0, 10.0, 60.0, 50.0]]]), size=64, seed=0)
    before = [p.detach().clone() for p in module.parameters()]
    trainer = pl.Trainer(accelerator="cpu", precision="bf16-mixed", gradient_clip_val=clip, max_steps=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader([batch], batch_size=None))
    assert trainer.global_step == 1
    # rel 1e-2: float32 norms of the 11 M gradients differ by 0.2% with the order of summation
    if optim == "sgd":
        change = torch.cat([(p.detach() - b).flatten() for p, b in zip(module.parameters(), before)])
        assert float(change.norm()) == pytest.approx(clip, rel=1e-2)
    else:  # AdamW's first step moves each weight by about lr whatever the gradient's scale; its first moment after
        # one step is (1 - beta1) times the gradient it was given: the clipped one
        optimizer = trainer.optimizers[0]
        beta1 = optimizer.param_groups[0]["betas"][0]
        moment = torch.cat([optimizer.state[p]["exp_avg"].flatten() for p in module.parameters() if p in optimizer.state])
        assert float(moment.norm()) / (1 - beta1) == pytest.approx(clip, rel=1e-2)


def test_a_resume_with_more_epochs_takes_the_new_schedule_from_its_first_step(tmp_path):
    """2 epochs of 10 steps, cosine without warm-up, resumed to 4 epochs: every step's lr is the closed form over the
    new 40 steps, 0.5 lr (1 + cos(pi k / 40)). The first resumed step took the checkpoint's lr, the old
    schedule's 0 at its end (cos(pi 20 / 20) = -1)."""
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader, TensorDataset

    cfg = compose_train(["optim.optimizer.fused=false", "optim.scheduler.warmup_steps=0"])
    lr = cfg.optim.optimizer.lr

    class Line(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(2, 1)
            self.lrs: list[float] = []

        def training_step(self, batch, batch_idx):
            return nn.functional.mse_loss(self.fc(batch[0]), batch[1])

        def on_before_optimizer_step(self, optimizer):
            self.lrs.append(optimizer.param_groups[0]["lr"])

        def configure_optimizers(self):
            return configure_optimizer(cfg.optim, self, int(self.trainer.estimated_stepping_batches))

    def fit(epochs: int, ckpt: str | None = None) -> Line:
        torch.manual_seed(0)
        module = Line()
        data = DataLoader(TensorDataset(torch.randn(20, 2), torch.randn(20, 1)), batch_size=2)
        last = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, filename="last", save_on_train_epoch_end=True)
        trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_progress_bar=False,
                             enable_model_summary=False, callbacks=[last])
        trainer.fit(module, data, ckpt_path=ckpt)
        return module

    assert fit(2).lrs == pytest.approx([0.5 * lr * (1 + math.cos(math.pi * k / 20)) for k in range(20)])
    resumed = fit(4, str(tmp_path / "last.ckpt"))
    assert resumed.lrs == pytest.approx([0.5 * lr * (1 + math.cos(math.pi * k / 40)) for k in range(20, 40)])
