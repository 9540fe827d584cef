"""Dense heads: forward(levels) -> HeadOutput with per-prior tensors concatenated over levels."""
