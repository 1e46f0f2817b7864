"""Weighted cross entropy on large-vocabulary logits: the checked entry point ``weighted_cross_entropy``.

The math is in ``README.md`` beside this file. One backend:

- ``chunked`` (``chunked.py``): plain PyTorch over chunks of rows; the loss never materialises an
  fp32 copy of the logits, and the backward recomputes each chunk's softmax from the saved
  log-sum-exp. Runs on any device; the reference for this op is ``torch.nn.functional.cross_entropy``
  (the tests compare against it).

``weighted_cross_entropy`` checks metadata in Python and calls one registered op,
``rwkvblocks::weighted_cross_entropy``, whose backward is ``rwkvblocks::weighted_cross_entropy_backward``;
the backend is chosen inside from metadata. Choose it explicitly with ``backend=`` or the
``RWKVBLOCKS_CROSS_ENTROPY_BACKEND`` environment variable.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .._checks import check_values
from .._dispatch import Backend, Dispatcher
from . import chunked
from .chunked import accumulation_dtype

__all__ = ["CrossEntropyInputs", "OP_NAMES", "cross_entropy_dispatcher", "weighted_cross_entropy"]

ENV_VAR = "RWKVBLOCKS_CROSS_ENTROPY_BACKEND"


@dataclass(frozen=True)
class CrossEntropyInputs:
    """What a backend needs to know about a cross-entropy call to accept or refuse it."""

    batch: int
    seq_len: int
    num_targets: int
    vocab: int
    dtype: torch.dtype
    device: torch.device


cross_entropy_dispatcher = Dispatcher(
    "weighted_cross_entropy",
    ENV_VAR,
    [
        Backend(
            "chunked",
            chunked.chunked_forward,
            description="chunked PyTorch: fp32 log-sum-exp per chunk of rows, recomputing backward (any device)",
            backward=chunked.chunked_backward,
        ),
    ],
)


def _select(logits: Tensor, targets: Tensor, backend: str | None) -> Backend:
    B, T, V = logits.shape
    inputs = CrossEntropyInputs(B, T, targets.shape[1], V, logits.dtype, logits.device)
    return cross_entropy_dispatcher.resolve(inputs, backend, device_key=f"{logits.device.type}/{logits.dtype}")


@torch.library.custom_op("rwkvblocks::weighted_cross_entropy", mutates_args=())
def _ce_op(
    logits: Tensor, targets: Tensor, weights: Tensor, l2wrap: float, backend: str | None
) -> tuple[Tensor, Tensor]:
    """Dispatching forward: the loss and the rows' log-sum-exp (kept for the backward)."""
    return _select(logits, targets, backend).run(logits, targets, weights)


@_ce_op.register_fake
def _ce_fake(logits, targets, weights, l2wrap, backend):
    _select(logits, targets, backend)
    acc = accumulation_dtype(logits.dtype)
    return logits.new_empty((), dtype=acc), logits.new_empty(targets.shape, dtype=acc)


@torch.library.custom_op("rwkvblocks::weighted_cross_entropy_backward", mutates_args=())
def _ce_backward_op(
    logits: Tensor, targets: Tensor, weights: Tensor, lse: Tensor, grad_loss: Tensor, l2wrap: float, backend: str
) -> tuple[Tensor, Tensor]:
    """Gradients of the logits and of the weights, from the backend named by ``backend``."""
    return _select(logits, targets, backend).backward(logits, targets, weights, lse, grad_loss, l2wrap)


@_ce_backward_op.register_fake
def _ce_backward_fake(logits, targets, weights, lse, grad_loss, l2wrap, backend):
    return torch.empty(logits.shape, dtype=logits.dtype, device=logits.device), torch.empty(
        weights.shape, dtype=weights.dtype, device=weights.device
    )


def _ce_setup_context(ctx, inputs, output):
    logits, targets, weights, l2wrap, backend = inputs
    lse = output[1]
    ctx.save_for_backward(logits, targets, weights, lse)
    ctx.l2wrap = l2wrap
    ctx.backend = _select(logits, targets, backend).name
    ctx.mark_non_differentiable(lse)
    ctx.set_materialize_grads(False)


def _ce_differentiate(ctx, grad_loss, _):
    if grad_loss is None:
        return None, None, None, None, None
    logits, targets, weights, lse = ctx.saved_tensors
    grad_logits, grad_weights = _ce_backward_op(logits, targets, weights, lse, grad_loss, ctx.l2wrap, ctx.backend)
    return grad_logits, None, grad_weights, None, None


_ce_op.register_autograd(_ce_differentiate, setup_context=_ce_setup_context)

OP_NAMES = ("rwkvblocks::weighted_cross_entropy", "rwkvblocks::weighted_cross_entropy_backward")


def weighted_cross_entropy(
    logits: Tensor,
    targets: Tensor,
    weights: Tensor,
    *,
    l2wrap: float = 0.0,
    backend: str | None = None,
    validate: bool | None = None,
) -> Tensor:
    """``sum_{b, t < N} weights[b, t] * (logsumexp(logits[b, t]) - logits[b, t, targets[b, t]])``.

    Row ``t`` of sample ``b`` predicts ``targets[b, t]`` for ``t < N``; rows from ``N`` to ``T - 1`` carry
    no loss and get a zero gradient. Next-token prediction therefore passes ``labels[:, 1:]`` with the
    full logits, never ``logits[:, :-1]``, whose backward would build a second logits-sized gradient.
    The loss is accumulated in fp32 (fp64 for fp64 logits) without an fp32 copy of the logits; the
    gradient has the logits' dtype. ``weights`` get a gradient too.

    One registered op, ``torch.ops.rwkvblocks.weighted_cross_entropy`` (fake kernel and autograd
    included; backward ``rwkvblocks::weighted_cross_entropy_backward``).

    Args:
        logits: Unnormalised scores.
        targets: Class ids in ``[0, V)`` (rows to ignore: weight 0 and any id in range).
        weights: Weight of each row's cross entropy.
        l2wrap: Upstream's L2Wrap factor: adds ``l2wrap * max logit`` to the gradient of each predicting
            row's arg-max logit, leaving the loss unchanged; 0 disables it.
        backend: ``"chunked"`` (or any registered backend); ``None`` picks automatically.
        validate: The check that every target is in ``[0, V)`` reads values: ``None`` runs it on CPU
            tensors outside ``torch.compile`` only, ``True`` everywhere, ``False`` never
            (see ``rwkvblocks.ops.check_values``).

    Shapes:
        logits: `[B, T, V]`, any float dtype; targets: `[B, N]` int64 or int32, ``N <= T``; weights:
        `[B, N]` float. Returns a scalar, fp32 (fp64 for fp64 logits).

    Reference: ``torch.nn.functional.cross_entropy``. Backends: ``chunked``.

    Raises:
        ValueError: wrong ranks, shapes, dtypes or devices, a negative ``l2wrap`` and, when values are
            checked, a target outside ``[0, V)``.
        BackendUnavailableError: the requested backend cannot run this input.

    Example:
        >>> import torch
        >>> from rwkvblocks.ops import weighted_cross_entropy
        >>> logits, labels = torch.randn(2, 5, 11), torch.randint(0, 11, (2, 5))
        >>> loss = weighted_cross_entropy(logits, labels[:, 1:], torch.full((2, 4), 1 / 8))
        >>> loss.shape
        torch.Size([])
    """
    if not isinstance(logits, Tensor) or logits.dim() != 3 or not logits.is_floating_point():
        raise ValueError(f"logits must be a floating-point [B, T, V] tensor, got {_describe(logits)}")
    B, T, V = logits.shape
    if not isinstance(targets, Tensor) or targets.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"targets must be an int64 or int32 tensor, got {_describe(targets)}")
    if targets.dim() != 2 or targets.shape[0] != B or targets.shape[1] > T:
        raise ValueError(f"targets must be [B, N] = [{B}, N <= {T}], got shape {list(targets.shape)}")
    if not isinstance(weights, Tensor) or not weights.is_floating_point() or weights.shape != targets.shape:
        raise ValueError(
            f"weights must be a floating-point tensor of shape {list(targets.shape)}, got {_describe(weights)}"
        )
    if not (logits.device == targets.device == weights.device):
        raise ValueError(
            f"logits, targets and weights must share a device, got {logits.device}, {targets.device}, {weights.device}"
        )
    if l2wrap < 0:
        raise ValueError(f"l2wrap must be >= 0, got {l2wrap}")
    if check_values(targets, validate):
        bad = (targets < 0) | (targets >= V)
        if bad.any():
            raise ValueError(f"targets must be in [0, {V}), got {targets[bad][:5].tolist()}")
    loss, _ = _ce_op(logits, targets.long(), weights, float(l2wrap), backend)
    return loss


def _describe(x) -> str:
    if isinstance(x, Tensor):
        return f"shape {list(x.shape)} dtype {x.dtype}"
    return type(x).__name__
