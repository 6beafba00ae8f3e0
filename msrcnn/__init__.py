"""msrcnn: Mask Scoring R-CNN (and plain Mask R-CNN) in JAX/Flax."""

__version__ = "0.1.0"
