"""The FSDP mixed-precision policy nbft builds: parameters in bf16, buffers left as the model keeps them.

A model's buffers (RoPE inverse frequencies, position ids) stay in fp32 under nbft's own bf16 path (params-only
mixed precision); under FSDP1 a ``buffer_dtype`` would cast them to bf16 on the first forward and keep them there,
so the same model would give other losses with FSDP than without.
"""

from __future__ import annotations

import pytest
import torch

from nbft.train.fsdp import fsdp_plugin


@pytest.mark.parametrize("version", ["1", "2"])
def test_policy_casts_parameters_not_buffers(monkeypatch, version):
    monkeypatch.setenv("FSDP_VERSION", version)
    policy = fsdp_plugin(torch.bfloat16).mixed_precision_policy
    assert policy.param_dtype == torch.bfloat16
    assert policy.reduce_dtype == torch.float32
    if version == "1":
        assert policy.buffer_dtype is None  # buffers keep their own dtype (FSDP1 casts them otherwise)
    else:
        assert not hasattr(policy, "buffer_dtype")  # FSDP2 never casts buffers


def test_no_policy_without_bf16(monkeypatch):
    monkeypatch.setenv("FSDP_VERSION", "1")
    assert fsdp_plugin(None).mixed_precision_policy is None
