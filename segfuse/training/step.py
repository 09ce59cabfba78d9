"""One optimisation step, shared by the training loop and the step timer.

:class:`TrainingParts` holds what a step needs (the network, its optimiser, learning-rate
scheduler, gradient scaler and loss); :func:`optimisation_step` runs one: forward and
loss under autocast (AMP on CUDA only), backward through the gradient scaler,
gradient clipping, the optimiser step. With ``decode_without_aux`` every sample is
decoded twice, with its auxiliaries and without any (one encoder pass, a doubled
decoder batch), and the loss averages both halves: the primary-only path then learns
from every sample, not only from those modality dropout happens to drop. With
``absent_drops="subset"`` the second decode drops a random non-empty subset of the
auxiliaries per sample instead of all of them (:func:`drop_random_subsets`), so with
several auxiliaries each "one of them missing" case is trained too.

Example:
    >>> optimizer = torch.optim.AdamW(net.parameters())  # doctest: +SKIP
    >>> parts = TrainingParts.of(net, optimizer, loss_fn, torch.device("cpu"))  # doctest: +SKIP
    >>> loss = optimisation_step(parts, (x, aux, present, y), grad_clip=12.0)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["Batch", "TrainingParts", "drop_random_subsets", "optimisation_step"]

#: ``(primary (B, C, *patch), {aux: (B, C_a, *patch / scale)}, {aux: present (B,)}, label (B, 1, *patch))``
Batch = tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor]


@dataclass
class TrainingParts:
    """The network and everything that updates it.

    ``model`` is the network; ``net`` is what runs the forward pass (``model`` itself,
    or its DistributedDataParallel wrapper under ``torchrun``); ``scheduler`` may be
    ``None`` (the step timer has none).
    """

    model: torch.nn.Module
    net: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    loss_fn: Callable[[Any, torch.Tensor], torch.Tensor]
    device: torch.device
    use_amp: bool
    decode_without_aux: bool = False
    absent_drops: str = "all"

    @classmethod
    def of(
        cls, model: torch.nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Callable, device: torch.device,
        *, amp: bool = False, scheduler: Any = None, decode_without_aux: bool = False, absent_drops: str = "all",
    ) -> TrainingParts:
        """Parts around ``model`` (not wrapped); AMP and its gradient scaler only on CUDA."""
        use_amp = amp and device.type == "cuda"
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
        return cls(model, model, optimizer, scheduler, scaler, loss_fn, device, use_amp, decode_without_aux,
                   absent_drops)


def drop_random_subsets(aux: dict[str, torch.Tensor], present: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Masks ``name → (B,)`` for a second decode that drops a random non-empty subset of the auxiliaries.

    Each sample draws one of the ``2**n - 1`` non-empty subsets of its ``n`` auxiliaries
    (uniformly, torch's generator) and that subset is absent (0); an auxiliary modality
    dropout already dropped (``present`` 0: its patch is zeros) stays absent. With one
    auxiliary this is every auxiliary absent.
    """
    names = list(aux)
    first = aux[names[0]]
    dropped = torch.randint(1, 2 ** len(names), (first.shape[0],), device=first.device)  # bit k set: k absent
    masks = {}
    for k, name in enumerate(names):
        kept = ((dropped >> k) & 1) == 0
        before = present.get(name) if present else None
        masks[name] = kept.float() if before is None else kept.float() * before.float()
    return masks


def optimisation_step(parts: TrainingParts, batch: Batch, *, grad_clip: float) -> torch.Tensor:
    """Forward, loss, backward, clip the gradient norm to ``grad_clip``, step; returns the loss (on the device)."""
    x, aux, present, y = batch
    with torch.autocast(device_type=parts.device.type, enabled=parts.use_amp):
        # with decode_without_aux the outputs are (2B, ...): with the auxiliaries, then without
        second = drop_random_subsets(aux, present) if parts.decode_without_aux and parts.absent_drops == "subset" \
            else None
        outputs = parts.net(x, aux=aux, present=present, with_absent=parts.decode_without_aux, second_present=second)
        loss = parts.loss_fn(outputs, torch.cat([y, y]) if parts.decode_without_aux else y)
    parts.optimizer.zero_grad(set_to_none=True)
    parts.scaler.scale(loss).backward()
    parts.scaler.unscale_(parts.optimizer)
    torch.nn.utils.clip_grad_norm_(parts.model.parameters(), grad_clip)
    parts.scaler.step(parts.optimizer)
    parts.scaler.update()
    return loss
