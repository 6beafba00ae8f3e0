"""(predictions, ground truth) -> training targets. Pure functions, no parameters."""
