"""The `gpu` tier (`pytest -m gpu`, run by `make gpu-check`; left out of `make test`): what only a CUDA device can
show. Each test skips, saying why, where there is no CUDA device (or, for DDP, fewer than 2)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from pytorch_lightning.utilities import move_data_to_device

from detlab.profile import bench
from detlab.config import compose_train
from detlab.structures import HeadOutput, Priors

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (make gpu-check on a GPU machine)"),
]
# The default model and data at a few seconds' size
TINY = ["data.image_size=128", "data.batch_size=4", "data.num_workers=0", "data.source.num_train_images=16",
        "data.source.num_val_images=8", "trainer.max_epochs=1", "logger=none", "speed.enabled=false",
        "eval.num_log_images=0"]


def test_cuda_nms_through_postprocess_equals_cpu():
    cfg = compose_train(["data.image_size=256"])
    parts = instantiate(cfg.model, cls_loss=cfg.loss, num_classes=3)
    batch = bench.random_batch(2, 256, objects=4, device=torch.device("cpu"))
    with torch.inference_mode():
        outputs, priors = parts.model.eval()(batch.images)
        g = torch.Generator().manual_seed(0)
        # scores spread across the threshold and overlapping boxes, so that NMS removes many of them
        outputs = HeadOutput(cls_logits=torch.randn(outputs.cls_logits.shape, generator=g) * 2 - 2,
                             box_reg=torch.randn(outputs.box_reg.shape, generator=g) * 0.2)
        on_cpu = parts.postprocess(outputs, priors, batch)
        cuda = torch.device("cuda")
        # Priors is a frozen dataclass, which Lightning's mover refuses
        cuda_priors = Priors(priors.boxes.to(cuda), priors.strides.to(cuda), priors.level_sizes)
        on_cuda = parts.postprocess.to(cuda)(move_data_to_device(outputs, cuda), cuda_priors,
                                             move_data_to_device(batch, cuda))
    assert max(len(d.scores) for d in on_cpu) > 10
    for cpu, gpu in zip(on_cpu, on_cuda):
        assert len(cpu.scores) == len(gpu.scores)
        torch.testing.assert_close(gpu.boxes.cpu(), cpu.boxes, atol=1e-3, rtol=0)
        torch.testing.assert_close(gpu.scores.cpu(), cpu.scores, atol=1e-5, rtol=0)
        assert torch.equal(gpu.labels.cpu(), cpu.labels)


def train(tmp_path: Path, *overrides: str) -> dict:
    """detlab-train with TINY + overrides; its results.json (the run stops on a non-finite training loss)."""
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "detlab.cli.train", *TINY, *overrides, f"hydra.run.dir={run_dir}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((run_dir / "results.json").read_text())


@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed"])
def test_mixed_precision_training_is_finite(tmp_path, precision):
    results = train(tmp_path, "trainer=gpu", f"trainer.precision={precision}")
    assert results["global_step"] == 4
    assert all(isinstance(v, float) for v in results["metrics"].values())


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL DDP needs 2 or more CUDA devices")
def test_nccl_ddp_training(tmp_path):
    results = train(tmp_path, "trainer=ddp", "trainer.accelerator=gpu", "trainer.devices=2",
                    "trainer.precision=16-mixed")
    assert results["global_step"] == 2  # 16 images, 4 per process, 2 processes
    assert all(isinstance(v, float) for v in results["metrics"].values())
