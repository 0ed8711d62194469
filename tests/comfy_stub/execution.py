"""Stand-in for how ComfyUI 0.8.0's `execution.py` maps a node over list inputs and merges the results.

As in `_async_map_node_over_list`: the longest input list sets the count (shorter lists repeat their last item);
before each item the interrupt flag is checked (and consumed) by `nodes.before_node_execution()`; an async call
becomes a task at once, inside `CurrentNodeContext(prompt_id, unique_id, index)`, given one loop turn, and the
next item follows; nothing bounds how many run together. `get_output_from_returns` then keeps the items' order
and concatenates their `ui` dicts key by key.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import nodes
from comfy_api.latest._io import NodeOutput
from comfy_execution.utils import CurrentNodeContext


async def _async_map_node_over_list(prompt_id: str, unique_id: str, obj: Any, input_data_all: dict[str, list],
                                    func: str, allow_interrupt: bool = False, execution_block_cb: Any = None,
                                    pre_execute_cb: Any = None, v3_data: Any = None) -> list:
    count = max((len(values) for values in input_data_all.values()), default=0)
    results: list = []

    async def process(inputs: dict[str, Any], index: int | None) -> None:
        if allow_interrupt:
            nodes.before_node_execution()
        clone = obj.PREPARE_CLASS_CLONE(v3_data)
        method = getattr(clone, func)
        if inspect.iscoroutinefunction(method):
            async def call(method=method, inputs=inputs, index=index):
                with CurrentNodeContext(prompt_id, unique_id, index):
                    return await method(**inputs)

            task = asyncio.create_task(call())
            await asyncio.sleep(0)
            results.append(task.result() if task.done() else task)
        else:
            with CurrentNodeContext(prompt_id, unique_id, index):
                results.append(method(**inputs))

    if count == 0:
        await process({}, None)
    for index in range(count):
        await process({k: v[min(index, len(v) - 1)] for k, v in input_data_all.items()}, index)
    return results


def get_output_from_returns(return_values: list, obj: Any) -> tuple[list, dict, bool]:
    results = [r.result for r in return_values if isinstance(r, NodeOutput) and r.result is not None]
    uis = [r.ui for r in return_values if isinstance(r, NodeOutput) and r.ui is not None]
    output = [[result[i] for result in results] for i in range(len(results[0]))] if results else []
    ui = {key: [entry for item in uis for entry in item[key]] for key in uis[0]} if uis else {}
    return output, ui, False
