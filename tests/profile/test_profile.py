"""Parameter and FLOP counts against torchvision's published model metadata; the speed protocol against models
whose time is known (they sleep), a fake asynchronous device, and a real tiny detector for the record's shape."""

import time

import numpy as np
import pytest
import torch
import torchvision
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from detlab.config import compose_train
from detlab.errors import CheckpointError
from detlab.data.transforms import DetectionTransform
from detlab.inference import Predictor
from detlab.profile import speed as protocol
from detlab.profile.cost import complexity
from detlab.profile.speed import measure_speed, speed_summary, synchronizer, time_stages



def test_resnet50_counts_match_torchvision_metadata():
    meta = torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta
    got = complexity(torchvision.models.resnet50(), 224)
    assert got["params"] == meta["num_params"]
    # torchvision's "_ops" are GFLOPs counted as multiply-adds; torch's counter counts 2 per multiply-add.
    assert got["gflops"] == pytest.approx(2 * meta["_ops"], rel=1e-3)


def test_counting_leaves_the_model_in_training_mode_and_its_statistics_alone():
    model = torchvision.models.resnet18().train()
    before = model.bn1.running_mean.clone()
    complexity(model, 64)
    assert model.training and model.bn1.running_mean.equal(before)


# --- the speed protocol ---------------------------------------------------------------------------------


class SleepyModel(nn.Module):
    """A model whose forward takes `seconds` (and `first_seconds` for its first `slow_calls` calls)."""

    def __init__(self, seconds: float, first_seconds: float = 0.0, slow_calls: int = 0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.seconds, self.first_seconds, self.slow_calls = seconds, first_seconds, slow_calls
        self.calls = 0

    def forward(self, images, targets=None):
        self.calls += 1
        time.sleep(self.first_seconds if self.calls <= self.slow_calls else self.seconds)
        return images.mean() * self.weight, None


class SleepyPostprocess(nn.Module):
    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def forward(self, outputs, priors, batch):
        time.sleep(self.seconds)
        return [None] * len(batch)


def Detector(model: nn.Module, postprocess: nn.Module, size: int = 32) -> Predictor:
    """The inference object the protocol times, around a model and post-processing whose times are known."""
    return Predictor(DetectionTransform(size), model, postprocess, 32, [1], ["thing"])


def test_median_is_the_sleep_of_each_stage():
    detector = Detector(SleepyModel(0.030), SleepyPostprocess(0.010))
    speed = measure_speed(detector, batch_size=2, warmup=1, repeats=5, device="cpu")
    lat = speed["latency_ms"]
    # sleep() never returns early; the upper margins absorb a loaded 2-core machine
    assert 30 <= lat["model"]["median"] < 60
    assert 10 <= lat["postprocess"]["median"] < 40
    assert lat["preprocess"]["median"] > 0
    total = lat["preprocess"]["median"] + 40
    assert total <= lat["total"]["median"] < total + 40
    assert speed["ms_per_img"] == lat["total"]["median"]
    assert speed["img_per_s"] == pytest.approx(2 * 1e3 / speed["batch_ms"]["total"]["median"])
    assert lat["model"]["p90"] >= lat["model"]["median"]


def test_warmup_iterations_are_not_timed():
    # 3 slow first calls: cold caches, cuDNN autotuning. Two passes (batch 1, batch B), each with 3 warm-up.
    model = SleepyModel(0.005, first_seconds=0.300, slow_calls=3)
    speed = measure_speed(Detector(model, SleepyPostprocess(0.0)), batch_size=1, warmup=3, repeats=4, device="cpu")
    assert model.calls == 2 * (3 + 4) + 1  # + the FLOP count's forward
    assert speed["latency_ms"]["model"]["p90"] < 150  # a slow call in the statistics would put p90 near 300
    assert speed["warmup"] == 3 and speed["repeats"] == 4


def test_warmup_zero_times_the_slow_calls():
    """The same model without warm-up: the slow calls show (so the previous test can fail)."""
    model = SleepyModel(0.005, first_seconds=0.300, slow_calls=3)
    speed = measure_speed(Detector(model, SleepyPostprocess(0.0)), batch_size=1, warmup=0, repeats=4, device="cpu")
    assert speed["latency_ms"]["model"]["p90"] >= 300


class FakeAsyncDevice:
    """A device that queues work and returns at once, as CUDA kernels do; synchronize() waits for the queue."""

    def __init__(self) -> None:
        self.pending = 0.0
        self.syncs = 0

    def launch(self, seconds: float) -> None:
        self.pending += seconds

    def synchronize(self) -> None:
        self.syncs += 1
        time.sleep(self.pending)
        self.pending = 0.0


def test_each_stage_is_timed_between_two_synchronisations():
    device = FakeAsyncDevice()
    stages = [("a", lambda x: device.launch(0.020)), ("b", lambda x: device.launch(0.005))]
    times = time_stages(stages, None, warmup=1, repeats=3, synchronize=device.synchronize)
    # Without a sync after the stage, its queued 20 ms would be billed to the next stage or to nobody.
    assert all(0.020 <= t < 0.035 for t in times["a"]), times
    assert all(0.005 <= t < 0.020 for t in times["b"]), times
    assert device.syncs == 2 * 2 * (1 + 3)


def test_cuda_devices_are_synchronised_and_cpu_is_not(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(device))
    synchronizer(torch.device("cuda", 1))()
    assert calls == [torch.device("cuda", 1)]
    synchronizer(torch.device("cpu"))()
    assert calls == [torch.device("cuda", 1)]


def test_measure_speed_synchronises_the_cuda_device_it_runs_on(monkeypatch):
    """On a (fake) CUDA device the protocol synchronises before and after every stage of every iteration."""
    calls = []
    monkeypatch.setattr(protocol, "synchronizer", lambda device: lambda: calls.append(device))
    # the tensors stay on the CPU: only the device argument says CUDA (this machine has no GPU)
    monkeypatch.setattr(nn.Module, "to", lambda self, *a, **k: self)
    monkeypatch.setattr(torch.Tensor, "to", lambda self, *a, **k: self)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU")
    cpu_autocast = torch.autocast
    monkeypatch.setattr(torch, "autocast", lambda *a, **k: cpu_autocast("cpu", enabled=False))
    speed = measure_speed(Detector(SleepyModel(0.0), SleepyPostprocess(0.0)), device="cuda", warmup=2, repeats=3)
    assert calls and set(calls) == {torch.device("cuda")}
    assert len(calls) == 2 * 3 * 2 * (2 + 3)  # 2 per stage, 3 stages, 2 passes (batch 1 and batch B)
    assert speed["device"] == "Fake GPU"


def test_record_of_a_real_tiny_detector(monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "4294967296")  # an allocator setting is a condition of the number
    cfg = compose_train(["model.neck.out_channels=16", "model.head.width=16", "model.head.depth=1"])
    parts = instantiate(cfg.model, cls_loss=cfg.loss, num_classes=3)
    parts.model.train()
    detector = Detector(parts.model, parts.postprocess, size=64)
    image = np.random.default_rng(1).integers(0, 256, (48, 80, 3), dtype=np.uint8)
    speed = measure_speed(detector, image=image, batch_size=2, warmup=1, repeats=2)
    assert parts.model.training  # put back as it was
    assert speed["input_size"] == 64 and speed["batch_size"] == 2 and speed["precision"] == "32-true"
    assert speed["params"] == sum(p.numel() for p in parts.model.parameters()) and speed["gflops"] > 0
    assert speed["torch"] == torch.__version__ and speed["device"].startswith("cpu")
    assert speed["allocator"]["MALLOC_MMAP_THRESHOLD_"] == "4294967296"
    assert "MALLOC_MMAP_THRESHOLD_=4294967296, median of 2 after 1 warm-up" in protocol.format_speed(speed)
    summary = speed_summary(speed)
    assert summary["speed/ms_per_img"] == speed["ms_per_img"]
    assert summary["speed/model_ms"] == speed["latency_ms"]["model"]["median"]


@pytest.mark.parametrize(
    "kwargs, key",
    [({"repeats": 0}, "speed.repeats"), ({"warmup": -1}, "speed.warmup"), ({"batch_size": 0}, "speed.batch_size"),
     ({"precision": "16-true"}, "speed.precision")],
)
def test_bad_protocol_names_the_key(kwargs, key):
    with pytest.raises(ValueError, match=key):
        measure_speed(Detector(SleepyModel(0.0), SleepyPostprocess(0.0)), **kwargs)


def test_run_speed_rebuilds_the_trained_model(tmp_path, monkeypatch):
    """detlab-eval speed: the detector comes back from the checkpoint's config and weights, without its data."""
    cfg = compose_train(["model.neck.out_channels=16", "model.head.width=16", "model.head.depth=1",
                         "data.image_size=64", "trainer.precision=bf16-mixed"])
    trained = instantiate(cfg.model, cls_loss=cfg.loss, num_classes=3).model
    state = {f"model.{k}": v + 1.0 if v.is_floating_point() else v for k, v in trained.state_dict().items()}
    checkpoint = tmp_path / "last.ckpt"
    saved_cfg = {key: OmegaConf.to_container(cfg[key], resolve=True) for key in ("model", "loss", "data", "trainer")}
    hparams = {"cfg": saved_cfg, "num_classes": 3, "category_ids": [1, 2, 3], "class_names": ["a", "b", "c"]}
    torch.save({"hyper_parameters": hparams, "state_dict": state, "global_step": 7}, checkpoint)

    seen = {}
    monkeypatch.setattr(protocol, "measure_speed", lambda det, **kw: seen.update(detector=det, **kw))
    protocol.run_speed(checkpoint, ["data.image_size=96"], device="cpu", repeats=3)
    loaded = seen["detector"].model.state_dict()
    assert all(torch.equal(loaded[k.removeprefix("model.")], v) for k, v in state.items())
    assert seen["detector"].transform.image_size == 96 and seen["precision"] == "bf16-mixed" and seen["repeats"] == 3
    assert callable(seen["detector"].postprocess)
    with pytest.raises(CheckpointError, match="no checkpoint at .*missing.ckpt"):
        protocol.run_speed(tmp_path / "missing.ckpt")
