"""detlab.training.checkpoint: a write that fails leaves the previous file whole; a bad file is a named error."""

import errno

import pytest
import pytorch_lightning as pl
import torch

import detlab.training.checkpoint
from detlab.training.checkpoint import (
    AtomicCheckpointIO, RandomState, check_resumable, check_state_fits, checkpoint_callbacks, read_checkpoint,
)
from detlab.training.optim import param_groups
from detlab.errors import CheckpointError, StorageError


def checkpoint(step: int) -> dict:
    return {"state_dict": {"w": torch.full((1000,), float(step))}, "hyper_parameters": {"cfg": {}}, "global_step": step}


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint(checkpoint(3), path)
    real_save = torch.save

    def full_disk(obj, file, *args, **kwargs):
        real_save(obj, file, *args, **kwargs)  # most of the bytes reach the file, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(detlab.training.checkpoint.torch, "save", full_disk)
    with pytest.raises(StorageError, match=r"last.ckpt .*no space left.*the previous checkpoint there is kept"):
        io.save_checkpoint(checkpoint(6), path)
    assert read_checkpoint(path)["global_step"] == 3
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temporary file left

    def killed(obj, file, *args, **kwargs):  # a kill mid-write: the process stops inside torch.save
        file.write(b"PK\x03\x04 half")
        raise KeyboardInterrupt

    monkeypatch.setattr(detlab.training.checkpoint.torch, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint(checkpoint(9), path)
    assert read_checkpoint(path)["global_step"] == 3


def test_bad_files_are_named(tmp_path):
    good = tmp_path / "good.ckpt"
    torch.save(checkpoint(3), good)
    cases = {
        "missing.ckpt": (None, "no checkpoint at"),  # never written
        "run_dir": (None, "is a folder, not a checkpoint file: .* checkpoints/last.ckpt"),  # ckpt_path=<run dir>
        "truncated.ckpt": (good.read_bytes()[:200], "cannot be read as a checkpoint"),
        "garbage.ckpt": (b"\x00" * 64, "cannot be read as a checkpoint"),
        "foreign.ckpt": (None, "not a checkpoint written by detlab-train"),  # a torch file, not Lightning's
    }
    torch.save({"model": torch.zeros(2)}, tmp_path / "foreign.ckpt")
    (tmp_path / "run_dir").mkdir()
    for name, (content, says) in cases.items():
        if content is not None:
            (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError, match=says) as caught:
            read_checkpoint(tmp_path / name)
        assert str(tmp_path / name) in str(caught.value)
    assert read_checkpoint(good)["global_step"] == 3


def test_a_resume_continues_only_what_the_checkpoint_holds():
    """The weights fit the checkpoint's model, and its optimizer state restores its own lr over optim.*: a change
    there crashed deep in torch (a head of another width, SGD over AdamW's state) or was recorded and never used
    (the lr). A weights file has no state to resume, and a finished run nothing left to train."""
    trained = {"model": {"head": {"width": 16, "depth": 1}}, "loss": {"gamma": 2.0},
               "optim": {"optimizer": {"lr": 0.001}}, "data": {"image_size": 64}, "trainer": {"max_epochs": 1}}
    full = {"hyper_parameters": {"cfg": trained}, "global_step": 3, "optimizer_states": [{}],
            "loops": {"fit_loop": {"epoch_progress": {"current": {"processed": 1}}}}}
    longer = {**trained, "trainer": {"max_epochs": 3}}
    check_resumable("last.ckpt", full, {**longer, "data": {"image_size": 96}})  # more epochs, other data: continues
    changed = {**longer, "model": {"head": {"width": 32, "depth": 1}}, "optim": {"optimizer": {"lr": 0.5}}}
    with pytest.raises(CheckpointError, match=r"model.head.width=32 \(the checkpoint's: 16\); "
                                              r"optim.optimizer.lr=0.5 \(the checkpoint's: 0.001\)"):
        check_resumable("last.ckpt", full, changed)
    with pytest.raises(CheckpointError, match=r"last.ckpt has finished: .* stops at trainer.max_epochs=1"):
        check_resumable("last.ckpt", full, trained)
    with pytest.raises(CheckpointError, match=r"stops at trainer.max_steps=3"):
        check_resumable("last.ckpt", full, {**trained, "trainer": {"max_epochs": 3, "max_steps": 3}})
    # a run with an EMA: Lightning's WeightAveraging saved the average as state_dict, the trained weights beside it
    averaged = {**full, "current_model_state": {}}
    ema = {"_target_": "detlab.training.ema.EMA", "decay": 0.999}
    check_resumable("last.ckpt", averaged, {**longer, "callbacks": {"default": None, "ema": ema}})
    with pytest.raises(CheckpointError, match=r"last.ckpt was written with a weight average .*callbacks=\[default,ema\]"):
        check_resumable("last.ckpt", averaged, {**longer, "callbacks": {"lr_monitor": {"_target_": "x.Missing"}}})
    check_resumable("last.ckpt", full, {**longer, "callbacks": {"ema": ema}})  # an average from here on: Lightning's
    # early stopping ended it (Lightning's state, patience included, comes back with the checkpoint): finished too
    stopped = {**full, "callbacks": {"EarlyStopping{'monitor': 'val/AP', 'mode': 'max'}": {"stopped_epoch": 1}}}
    stopping = {**longer, "callbacks": {"early_stopping": {"_target_": "pytorch_lightning.callbacks.EarlyStopping"}}}
    with pytest.raises(CheckpointError, match=r"last.ckpt has finished: early stopping ended it after epoch 1"):
        check_resumable("last.ckpt", stopped, stopping)
    check_resumable("last.ckpt", stopped, longer)  # on without it
    weights = {k: v for k, v in full.items() if k not in ("optimizer_states", "loops")}
    with pytest.raises(CheckpointError, match=r"weights.ckpt holds weights only .* model.weights=weights.ckpt"):
        check_resumable("weights.ckpt", weights, longer)


def test_weights_and_optimizer_state_that_torch_would_refuse_stop_before_the_resume_naming_the_new_key():
    """A key detlab added after a checkpoint was written is missing from its config, so check_resumable cannot
    compare it; optim.decay_norms_and_biases=true then built one parameter group where the checkpoint has two, and
    torch's load failed inside Lightning's fit. Whatever check_state_fits lets through, torch loads."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    trained_cfg = {"model": {"width": 4}, "optim": {"lr": 0.1}}
    optimizer = torch.optim.SGD(param_groups(net, trained_cfg["optim"]), lr=0.1)
    saved = {"state_dict": net.state_dict(), "optimizer_states": [optimizer.state_dict()],
             "hyper_parameters": {"cfg": trained_cfg}}

    def torch_loads(module, groups) -> bool:
        try:
            module.load_state_dict(saved["state_dict"])
            torch.optim.SGD(groups, lr=0.1).load_state_dict(saved["optimizer_states"][0])
        except (RuntimeError, ValueError):
            return False
        return True

    same = {"model": {"width": 4}, "optim": {"lr": 0.1}}
    assert torch_loads(net, param_groups(net, same["optim"]))
    check_state_fits("last.ckpt", saved, same, net, param_groups(net, same["optim"]))
    one_group = {**same, "optim": {"lr": 0.1, "decay_norms_and_biases": True}}
    assert not torch_loads(net, param_groups(net, one_group["optim"]))
    with pytest.raises(CheckpointError, match=r"ckpt_path=last.ckpt does not fit .* parameter groups hold \[4\] "
                                              r"parameters, the checkpoint's \[1, 3\]\. This run sets keys the "
                                              r"checkpoint's config lacks: optim.decay_norms_and_biases=True"):
        check_state_fits("last.ckpt", saved, one_group, net, param_groups(net, one_group["optim"]))
    wider = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8))
    assert not torch_loads(wider, param_groups(wider, same["optim"]))
    with pytest.raises(CheckpointError, match=r"weight\(s\) differ in name or shape \(first: 0.bias: this run's "
                                              r"\(8,\), the checkpoint's \(4,\)\)"):
        check_state_fits("last.ckpt", saved, same, wider, param_groups(wider, same["optim"]))


def test_a_ddp_resume_continues_each_ranks_own_augmentation(tmp_path):
    """The checkpoint keeps every rank's augmentation stream (augment_by_rank); rank 1 continues its own, not
    rank 0's, which would make the two ranks draw the same jitter again after a resume."""
    from types import SimpleNamespace

    from detlab.data.datamodule import DetectionDataModule
    from detlab.data.shapes import ShapesSource
    from detlab.training.checkpoint import RandomState, _augmentation_steps

    source = ShapesSource(num_train_images=2, num_val_images=1, image_size=48, cache_dir=str(tmp_path))
    datamodule = DetectionDataModule(source=source, image_size=32, num_workers=0, augment={"scale_range": [0.5, 1.5]})
    trainer = SimpleNamespace(datamodule=datamodule, global_rank=1, world_size=2)
    callback, checkpoint = RandomState(), {}
    callback.on_save_checkpoint(trainer, None, checkpoint)  # no process group: this rank's stream only
    state = checkpoint["random_state"]
    rank1 = [(py, {**np_state, "state": {"state": 7, "inc": 9}}) for py, np_state in state["augment"]]
    state["augment_by_rank"] = [state["augment"], rank1]
    callback.on_load_checkpoint(trainer, None, checkpoint)
    assert [step.random_generator.bit_generator.state for step in _augmentation_steps(trainer)] == [s for _, s in rank1]


class _Regression(pl.LightningModule):
    """A one-weight model whose steps depend on the order of its shuffled batches."""

    def __init__(self, fail_at_step: int | None = None) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.fail_at_step = fail_at_step

    def training_step(self, batch, batch_idx):
        if self.global_step == self.fail_at_step:
            raise RuntimeError("killed")
        return ((self.layer(batch[0]) - batch[1]) ** 2).mean()

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", ((self.layer(batch[0]) - batch[1]) ** 2).mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def _loader(self, shuffle: bool):
        x = torch.linspace(-1, 1, 12)[:, None]
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, 3 * x ** 2), batch_size=4, shuffle=shuffle)

    def train_dataloader(self):
        return self._loader(shuffle=True)

    def val_dataloader(self):
        return self._loader(shuffle=False)


def _fit(folder, module: pl.LightningModule, max_epochs: int, ckpt_path=None) -> None:
    trainer = pl.Trainer(
        max_epochs=max_epochs, check_val_every_n_epoch=2, callbacks=[*checkpoint_callbacks(folder, True, 0), RandomState()],
        logger=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        accelerator="cpu", deterministic=True,
    )
    trainer.fit(module, ckpt_path=ckpt_path)


def _step(path) -> int:
    assert path.is_file(), sorted(p.name for p in path.parent.glob("*"))
    return torch.load(path, weights_only=False)["global_step"]


def test_last_ckpt_is_written_every_epoch_and_resumes_exactly_when_validation_is_less_often(tmp_path):
    """last.ckpt after every epoch, as the README's table says, also with trainer.check_val_every_n_epoch > 1:
    Lightning's ModelCheckpoint then saved at validation end only, so a run validating every 2nd epoch (or only
    at the end) had no last.ckpt until then, and the one it wrote sat inside the epoch, whose replay on resume drew
    the train loader's seed again: other shuffles, other weights than the run never stopped."""
    pl.seed_everything(0)
    _fit(tmp_path / "one", _Regression(), max_epochs=1)
    assert _step(tmp_path / "one" / "last.ckpt") == 3  # 12 examples at batch 4, no validation
    pl.seed_everything(0)
    straight = _Regression()
    _fit(tmp_path / "straight", straight, max_epochs=4)
    pl.seed_everything(0)
    with pytest.raises(RuntimeError, match="killed"):
        _fit(tmp_path / "killed", _Regression(fail_at_step=7), max_epochs=4)  # in epoch 3, after epoch 2's validation
    assert _step(tmp_path / "killed" / "last.ckpt") == 6
    pl.seed_everything(123)  # a resume's own seed: the checkpoint's random state wins
    resumed = _Regression()
    _fit(tmp_path / "resumed", resumed, max_epochs=4, ckpt_path=tmp_path / "killed" / "last.ckpt")
    assert torch.equal(resumed.layer.weight, straight.layer.weight) and torch.equal(resumed.layer.bias, straight.layer.bias)


def test_cuda_random_state_of_more_gpus_resumes_on_fewer(monkeypatch):
    """A checkpoint of a 2-GPU machine (one CUDA generator state per GPU) resumed on a 1-GPU machine restores the
    state of the GPU it has; torch's set_rng_state_all would index a second generator that is not there. CUDA is
    faked down to torch's own default_generators, which its setter indexes once CUDA is initialised."""
    from types import SimpleNamespace

    class Generator:
        state = None

        def set_state(self, state):
            self.state = state

    gpu = Generator()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)  # as after Lightning's set_device: set at once
    monkeypatch.setattr(torch.cuda.random, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "default_generators", (gpu,))
    saved = [torch.full((16,), 1, dtype=torch.uint8), torch.full((16,), 2, dtype=torch.uint8)]
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: saved)
    trainer = SimpleNamespace(datamodule=None, global_rank=0, world_size=1)
    checkpoint = {}
    RandomState().on_save_checkpoint(trainer, None, checkpoint)
    RandomState().on_load_checkpoint(trainer, None, checkpoint)
    assert torch.equal(gpu.state, saved[0])
