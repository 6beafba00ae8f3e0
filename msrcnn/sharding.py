"""Device mesh and shardings: one 'data' axis over every device of every process."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def data_mesh() -> Mesh:
    """A 1-D mesh over all devices (all hosts), axis 'data'."""
    return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over 'data'; the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def global_batch(mesh: Mesh, local_batch: dict) -> dict:
    """This process's numpy batch -> global jax arrays sharded along the batch axis.

    Each process passes the examples it read (its shard); on one process this is a plain
    device_put with the batch split across local devices.
    """
    sharding = batch_sharded(mesh)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch
    )


def allgather_json(obj) -> list:
    """Every process's JSON-serialisable `obj`, in process order (a one-item list on one
    process). For host-side results such as evaluation detections or data-iterator positions,
    which differ between processes."""
    if jax.process_count() == 1:
        return [obj]
    import json

    from jax.experimental import multihost_utils

    data = np.frombuffer(json.dumps(obj).encode("utf-8"), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.asarray([data.size], np.int64)))
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[: data.size] = data
    gathered = np.asarray(multihost_utils.process_allgather(padded))
    return [
        json.loads(bytes(row[: int(n)]).decode("utf-8"))
        for row, n in zip(gathered, sizes.reshape(-1), strict=True)
    ]
