"""The weight average (detlab.training.ema) against an average computed by hand from the weights after each step,
through Lightning and across a resume; and its key's bounds."""

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from detlab.training.ema import EMA

DECAY = 0.5


class Line(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.fc(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Record(pl.Callback):
    """The weights after each optimizer step (read before the EMA callback swaps anything in)."""

    def __init__(self) -> None:
        self.weights: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer, module, *args) -> None:
        self.weights.append(module.fc.weight.detach().clone())


def fit(tmp_path, epochs: int, record: Record, ckpt: str | None = None) -> Line:
    torch.manual_seed(0)
    data = DataLoader(TensorDataset(torch.randn(12, 2), torch.randn(12, 1)), batch_size=4)  # 3 steps an epoch
    module = Line()
    trainer = pl.Trainer(
        max_epochs=epochs, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[record, EMA(DECAY), pl.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True)],
    )
    trainer.fit(module, data, ckpt_path=ckpt)
    return module


def by_hand(weights: list[torch.Tensor]) -> torch.Tensor:
    """The first update copies; update k (k = 1, 2, ...) moves by 1 - min(decay, (1 + k) / (10 + k))."""
    average = weights[0]
    for k, w in enumerate(weights[1:], start=1):
        d = min(DECAY, (1 + k) / (10 + k))
        average = d * average + (1 - d) * w
    return average


def test_the_average_equals_the_one_computed_by_hand_and_continues_across_a_resume(tmp_path):
    first = Record()
    module = fit(tmp_path, 1, first)
    assert len(first.weights) == 3
    torch.testing.assert_close(module.fc.weight, by_hand(first.weights))  # the average is kept at the end
    assert not torch.allclose(module.fc.weight, first.weights[-1])
    saved = torch.load(tmp_path / "last.ckpt", weights_only=False)
    torch.testing.assert_close(saved["state_dict"]["fc.weight"], by_hand(first.weights))
    torch.testing.assert_close(saved["current_model_state"]["fc.weight"], first.weights[-1])

    second = Record()
    resumed = fit(tmp_path, 2, second, ckpt=str(tmp_path / "last.ckpt"))
    assert len(second.weights) == 3  # steps 4-6, continuing from the weights as trained, not from their average
    torch.testing.assert_close(resumed.fc.weight, by_hand(first.weights + second.weights))


@pytest.mark.parametrize("decay", [0.0, 1.0, 1.5])
def test_decay_outside_the_open_interval_names_the_key(decay):
    with pytest.raises(ValueError, match=r"ema\.decay"):
        EMA(decay)
