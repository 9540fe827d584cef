"""Backbones: forward(images) -> feature maps by increasing stride, with out_channels and strides."""
