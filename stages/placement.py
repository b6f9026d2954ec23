"""Where a stage's work ran: units of work per Ray node, kept beside the stage's outputs as `placement.json`.

Workers and actors tag what they return with `current_node()`; the stage counts the units (training clips,
expressions) per node and writes

```
{"unit": "expressions", "nodes": {"<node id>": {"work": 3, "address": "10.0.0.5"}, ...}}
```
On a cluster this shows that the work was spread (and how unevenly); on one machine it names one node.
"""

from __future__ import annotations

from collections.abc import Mapping

import ray

from prvos_core import storage

PLACEMENT_FILE = "placement.json"


def current_node() -> str:
    """The Ray node id of the calling worker, actor or driver."""
    return ray.get_runtime_context().get_node_id()


def write_placement(out_dir: str, work_per_node: Mapping[str, float], unit: str) -> str:
    """Write `<out_dir>/placement.json` (work per node with the node's address) and return its URI."""
    addresses = {node["NodeID"]: node.get("NodeManagerAddress", "") for node in ray.nodes()}
    payload = {
        "unit": unit,
        "nodes": {
            node: {"work": work, "address": addresses.get(node, "")} for node, work in sorted(work_per_node.items())
        },
    }
    uri = storage.join(out_dir, PLACEMENT_FILE)
    storage.write_json(uri, payload)
    return uri
