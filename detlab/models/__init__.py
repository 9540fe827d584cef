"""Detector parts: backbones, necks, heads, priors, box coding, assignment, post-processing, builders."""
