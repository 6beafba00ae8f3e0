"""The training state pytree."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import optax


class TrainState(flax.struct.PyTreeNode):
    """Everything a step changes. PRNG keys are derived from (seed, step), not stored.

    Attributes:
      step: int32 scalar, number of updates applied.
      params: model parameters (float32).
      opt_state: optax state.
      batch_stats: BatchNorm running statistics ({} unless norm='bn').
    """

    step: jax.Array
    params: Any
    opt_state: optax.OptState
    batch_stats: Any

    def variables(self) -> dict:
        out = {"params": self.params}
        if self.batch_stats:
            out["batch_stats"] = self.batch_stats
        return out
