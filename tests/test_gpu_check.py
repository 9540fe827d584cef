"""make gpu-check without a GPU: it says so and stops at once, with exit status 0."""

import time

import torch

from detlab import gpu_check


def test_without_cuda_it_says_so_and_exits_0(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    start = time.perf_counter()
    assert gpu_check.main(["--json", str(tmp_path / "gpu.json")]) == 0
    assert time.perf_counter() - start < 5  # at once: nothing is built or run (a bound, not a measurement)
    assert "no CUDA device visible" in capsys.readouterr().out
    assert not (tmp_path / "gpu.json").exists()
