"""FSDP (``accelerate launch`` with an FSDP config): the plugin nbft asks for, and whole-model state from shards.

Under FSDP each process holds a shard of every weight and of the optimizer state; checkpoints and the final model
hold the whole thing, gathered on the main process (every process must call these functions: they communicate).

Example:
    >>> fsdp_requested()  # outside `accelerate launch --use_fsdp`
    False
"""

from __future__ import annotations

import os
from typing import Any

import torch


def fsdp_requested() -> bool:
    """True when accelerate was launched with an FSDP config (``ACCELERATE_USE_FSDP``)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def fsdp_plugin(amp_dtype: torch.dtype | None) -> Any:
    """The accelerate config's FSDP settings; with bf16, gradients are reduced and outputs returned in fp32 (as
    nbft's own all-reduce of fp32 master gradients does), and buffers keep their own dtype; unless the config sets
    a mixed-precision policy."""
    from accelerate.utils import FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin()
    if amp_dtype is not None and plugin.mixed_precision_policy is None:
        if plugin.fsdp_version == 2:
            from torch.distributed.fsdp import MixedPrecisionPolicy

            policy: Any = MixedPrecisionPolicy(
                param_dtype=amp_dtype, reduce_dtype=torch.float32, output_dtype=torch.float32
            )
        else:
            from torch.distributed.fsdp import MixedPrecision

            # no buffer_dtype: buffers (RoPE frequencies...) keep their dtype, as on nbft's own bf16 path
            policy = MixedPrecision(param_dtype=amp_dtype, reduce_dtype=torch.float32)
        plugin.mixed_precision_policy = policy
    return plugin


def full_state_dict(accelerator: Any, module: Any) -> dict[str, torch.Tensor]:
    """The whole model's state dict on the main process, from the FSDP-wrapped loss ``module``."""
    full = accelerator.get_state_dict(module)
    return {k.removeprefix("model."): v for k, v in full.items()}


def full_optimizer_state(module: Any, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The whole optimizer state (on CPU), gathered from the shards: what a checkpoint holds."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_optimizer_state_dict(module, optimizer, options=options)


def load_full_optimizer_state(module: Any, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Give each process its shard of a whole optimizer state (from a checkpoint)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(module, optimizer, state, options=StateDictOptions(full_state_dict=True))
