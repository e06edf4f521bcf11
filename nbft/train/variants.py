"""Train several variants from one base: a snapshot of the base's weights *and* buffers, restored bit for bit.

Restoring a base with ``model.load_state_dict(base_state)`` misses every buffer the state dict leaves out (RoPE's
``inv_freq`` is non-persistent) and keeps whatever dtype the model holds now, so a variant could start from a base
that differs from the one evaluated. :class:`BaseSnapshot` copies every parameter and every buffer (persistent or
not) once, with its dtype, and :meth:`BaseSnapshot.restore` puts back exactly those values and dtypes, keeping the
Parameter objects (tied weights stay tied). :func:`fingerprint` is a hash of all of them, to check that two models
(or one model at two moments) are bit-for-bit the same.

Example:
    >>> import torch
    >>> model = torch.nn.BatchNorm1d(3)
    >>> before = fingerprint(model)
    >>> with BaseSnapshot(model) as base:
    ...     for variant in ("a", "b"):
    ...         base.restore()                  # every variant starts from the same base
    ...         _ = model(torch.randn(4, 3))    # (train the variant here)
    >>> fingerprint(model) == before            # and the model is given back as it came
    True
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch

__all__ = ["BaseSnapshot", "fingerprint"]


def _owners(model: Any, kind: str) -> dict[int, list[tuple[Any, str]]]:
    """Each parameter (or buffer) tensor by identity, with every (module, attribute name) that holds it."""
    out: dict[int, list[tuple[Any, str]]] = {}
    for module in model.modules():
        store = module._parameters if kind == "parameters" else module._buffers
        for leaf, value in store.items():
            if value is not None:
                out.setdefault(id(value), []).append((module, leaf))
    return out


class BaseSnapshot:
    """A copy of ``model``'s parameters and buffers (non-persistent ones too, such as RoPE's ``inv_freq``), each in
    its dtype, taken once; :meth:`restore` gives them back bit for bit.

    ``device``: where the copies are kept (default: where each tensor is now; ``"cpu"`` frees accelerator memory
    during training at the cost of a copy per restore). Used as a context manager, the model is restored on exit,
    also after an error, so a caller's model comes back as it came.

    Example:
        >>> model = torch.nn.Linear(2, 2)
        >>> base = BaseSnapshot(model)
        >>> with torch.no_grad():
        ...     _ = model.to(torch.bfloat16).weight.add_(1)
        >>> base.restore(); base.matches()
        True
    """

    def __init__(self, model: Any, device: str | torch.device | None = None) -> None:
        self.model = model
        self._params: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
        self._buffers: list[tuple[list[tuple[Any, str]], torch.Tensor]] = []
        with torch.no_grad():
            for owners in _owners(model, "parameters").values():
                module, leaf = owners[0]
                p = module._parameters[leaf]
                self._params.append((p, p.detach().to(device or p.device, copy=True)))
            for owners in _owners(model, "buffers").values():
                module, leaf = owners[0]
                b = module._buffers[leaf]
                self._buffers.append((owners, b.detach().to(device or b.device, copy=True)))

    @torch.no_grad()
    def restore(self) -> None:
        """Put the base's values back, in the dtype they had when the snapshot was taken, on the device each tensor
        is on now. Parameters keep their identity (ties and optimizer references survive)."""
        held = {id(p) for p in self.model.parameters()}
        for p, saved in self._params:
            if id(p) not in held:
                raise RuntimeError(
                    f"the model no longer holds a parameter of shape {tuple(saved.shape)} it had at the snapshot "
                    "(its parameters were replaced, e.g. by resize_token_embeddings); take a new BaseSnapshot"
                )
            if p.dtype == saved.dtype and p.shape == saved.shape:
                p.copy_(saved)
            else:
                p.data = saved.to(p.device, copy=True)
        for owners, saved in self._buffers:
            module, leaf = owners[0]
            current = module._buffers.get(leaf)
            if current is not None and current.dtype == saved.dtype and current.shape == saved.shape:
                current.copy_(saved)  # in place: every module that shares this buffer sees it
                continue
            value = saved.to(current.device if current is not None else saved.device, copy=True)
            for module, leaf in owners:  # a new tensor: give it to every module that held the old one
                module._buffers[leaf] = value

    def matches(self) -> bool:
        """True if the model holds exactly the snapshot's values and dtypes now."""
        return all(p.dtype == s.dtype and torch.equal(p.detach().to(s.device), s) for p, s in self._params) and all(
            (b := owners[0][0]._buffers.get(owners[0][1])) is not None
            and b.dtype == s.dtype
            and torch.equal(b.to(s.device), s)
            for owners, s in self._buffers
        )

    def __enter__(self) -> BaseSnapshot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()


def fingerprint(model: Any) -> str:
    """A SHA-256 of every parameter and buffer of ``model`` (names, dtypes, shapes and bytes): equal fingerprints
    mean bit-for-bit equal weights and buffers.

    Example:
        >>> fingerprint(torch.nn.Linear(2, 2)) == fingerprint(torch.nn.Linear(2, 2))  # two random inits
        False
    """
    h = hashlib.sha256()
    named = [*model.named_parameters(), *model.named_buffers()]
    for name, t in sorted(named, key=lambda item: item[0]):
        t = t.detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
