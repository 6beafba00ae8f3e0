"""A tiny `shapes` dataset built once per test session (16 train / 8 validation, 64 x 80)."""

from __future__ import annotations

import pytest

# Non-square so that height/width mix-ups show; 16 / 8 images so each split has an empty
# image (index 3) and the suite stays fast.
TINY = {"seed": 7, "image_size": (64, 80), "num_train": 16, "num_validation": 8}


@pytest.fixture(scope="session")
def tiny_builder(tmp_path_factory):
    from msrcnn.data.builders import shapes

    return shapes.build_shapes(tmp_path_factory.mktemp("shapes"), **TINY)


@pytest.fixture(scope="session")
def train_source(tiny_builder):
    return tiny_builder.as_data_source("train")


@pytest.fixture(scope="session")
def val_source(tiny_builder):
    return tiny_builder.as_data_source("validation")
