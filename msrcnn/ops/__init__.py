"""Pure jnp detection ops: static shapes, validity masks, float32 geometry; no flax, no config."""
