"""Training: the jitted step (train_step: the detector's stages, targets and losses), the
loop around it (trainer: data, checkpoints, logging, evaluation), losses and optimiser."""
