"""make gpu-check without a GPU: it says so and stops at once, with exit status 0."""

import pytest
import torch

from detlab.cli import gpu_check


def test_without_cuda_it_says_so_and_exits_0(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for step in ("gpu_tier", "throughput", "short_training", "environment"):  # at once: nothing is built or run
        monkeypatch.setattr(gpu_check, step, lambda *args, step=step: pytest.fail(f"gpu_check ran {step} without CUDA"))
    monkeypatch.setattr(gpu_check.bench_cli, "main", lambda *args: pytest.fail("gpu_check ran the bench without CUDA"))
    assert gpu_check.main(["--json", str(tmp_path / "gpu.json")]) == 0
    assert "no CUDA device visible" in capsys.readouterr().out
    assert not (tmp_path / "gpu.json").exists()
