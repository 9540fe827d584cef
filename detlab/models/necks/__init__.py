"""Necks: forward(features) -> pyramid levels, lowest stride first, with out_channels and strides."""
