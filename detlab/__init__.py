"""detlab: an object-detection research framework."""

__version__ = "0.1.0"
