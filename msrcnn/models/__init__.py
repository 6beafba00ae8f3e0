"""Flax linen modules: arrays in, arrays out; no losses, no targets."""
