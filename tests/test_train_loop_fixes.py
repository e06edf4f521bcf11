"""Loop bugs found by reading the code (issue 14, items 6-10), each pinned by a test that failed before its fix:
a single Ctrl-C anywhere in a run only asks for a stop; fp16 steps skipped for overflow do not count as updates;
the compile check's probe runs without dropout; a resume from step 0 does not measure the base model again; CUDA
RNG states go back to their own devices."""

from __future__ import annotations

import torch


def test_cuda_rng_states_go_back_to_their_own_devices(monkeypatch):
    from nbft.train import checkpoint

    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # 12 devices, faked: no GPU needed
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: restored.extend(int(s[0]) for s in states))
    saved = {"torch_cpu": torch.get_rng_state(), **{f"torch_cuda_{i}": torch.tensor([i]) for i in range(12)}}
    checkpoint._restore_rng(saved)
    assert restored == list(range(12))  # device 10's state on device 10, not on device 2
