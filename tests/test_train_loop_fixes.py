"""Loop bugs found by reading the code (issue 14, items 6-10), each pinned by a test that failed before its fix:
a single Ctrl-C anywhere in a run only asks for a stop; fp16 steps skipped for overflow do not count as updates;
the compile check's probe runs without dropout; a resume from step 0 does not measure the base model again; CUDA
RNG states go back to their own devices."""

from __future__ import annotations

import torch


def test_the_compile_checks_probe_runs_without_dropout_so_a_dropout_model_can_compile():
    from transformers import GPT2Config, GPT2LMHeadModel

    from nbft.train.kernels import apply_kernels, kernel_probe
    from nbft.train.layout import VarlenLayout
    from nbft.train.loss import CausalLMLoss

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=300, n_positions=64, n_embd=32, n_layer=2, n_head=2, bos_token_id=0,
                        eos_token_id=0, resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1)  # fmt: skip
    model = GPT2LMHeadModel(config).train()
    module, layout = CausalLMLoss(model, fused=True), VarlenLayout(0, torch.device("cpu"))
    first, second = kernel_probe(module, layout), kernel_probe(module, layout)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))  # the same maths twice: no dropout
    assert model.training  # and the model trains with its dropout afterwards
    plan = apply_kernels(model, "compile", device=torch.device("cpu"), probe=lambda: kernel_probe(module, layout))
    assert plan.name == "compile", plan.note
    plan.undo()


def test_cuda_rng_states_go_back_to_their_own_devices(monkeypatch):
    from nbft.train import checkpoint

    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # 12 devices, faked: no GPU needed
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: restored.extend(int(s[0]) for s in states))
    saved = {"torch_cpu": torch.get_rng_state(), **{f"torch_cuda_{i}": torch.tensor([i]) for i in range(12)}}
    checkpoint._restore_rng(saved)
    assert restored == list(range(12))  # device 10's state on device 10, not on device 2
