"""The WKV operator of RWKV-7 ("Goose"): checked entry point ``wkv7`` and its backends.

The math is in ``README.md`` beside this file. Backends, in order of automatic preference:

- ``triton_chunk`` (``wkv7_triton_chunk``): Triton, chunks of 16 tokens in the WY / UT form streamed with
  the state on chip, forward and backward; the default for prefill and training on CUDA tensors.
- ``triton_recurrent`` (``wkv7_triton_recurrent``): Triton, one token at a time with the state in
  registers, forward only; preferred on CUDA for decoding (at most ``TRITON_DECODE_MAX_LEN`` tokens per
  sequence, no gradient).
- ``chunked`` (``wkv7_chunked``): chunked PyTorch in the WY / UT form with a hand-written,
  linear-memory backward; the default on a CPU.
- ``reference`` (``wkv7_reference``): one token at a time; the oracle, always accepts. Automatic
  selection also prefers it for decoding on a CPU (``T <= DECODE_MAX_LEN``), where it is faster.

The Triton backends need CUDA tensors; with ``TRITON_INTERPRET=1`` (set before the first call) they also
run CPU tensors through the Triton interpreter, but only when asked for by name: automatic selection on a
CPU never picks them. Every backend accepts packed sequences (``cu_seqlens``). Choose one explicitly with
``backend=`` or the ``RWKVBLOCKS_WKV7_BACKEND`` environment variable.

``wkv7`` checks metadata in Python (traceable by ``torch.compile``) and calls one registered op,
``rwkvblocks::wkv7``. Inside it the dispatcher picks the backend from metadata; the op returns,
besides ``o`` and the final state, what that backend keeps for its backward (``Backend.residual``),
and its autograd formula calls ``rwkvblocks::wkv7_backward``, which runs the same backend's
``Backend.backward``. Calls that need neither autograd nor a graph (eager inference) run the chosen
backend without the op boundary, whose cost exceeds a one-token CPU step; a compiled CPU decode step
traces the plain recurrence, so the compiler fuses it with its neighbours.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import Tensor

from .._checks import check_cu_seqlens, check_values, shape_error
from .._dispatch import Backend, BackendUnavailableError, Dispatcher
from ..wkv._triton_common import INTERPRET_ENV, interpreting, triton_probe, triton_reasons
from .chunked import DEFAULT_CHUNK_SIZE, chunked_backward, chunked_forward, entering_shape, wkv7_chunked
from .reference import accumulation_dtype, wkv7_reference
from .triton_chunk import triton_chunk_ops, wkv7_triton_chunk
from .triton_recurrent import triton_recurrent_op, wkv7_triton_recurrent

__all__ = [
    "DECODE_MAX_LEN",
    "ENV_VAR",
    "OP_NAMES",
    "TRITON_DECODE_MAX_LEN",
    "WKV7Inputs",
    "state_from_fla",
    "state_to_fla",
    "wkv7",
    "wkv7_chunked",
    "wkv7_dispatcher",
    "wkv7_reference",
    "wkv7_triton_chunk",
    "wkv7_triton_recurrent",
]

ENV_VAR = "RWKVBLOCKS_WKV7_BACKEND"


@dataclass(frozen=True)
class WKV7Inputs:
    """What a backend needs to know about a (validated) WKV7 call to accept or refuse it."""

    batch: int
    seq_len: int
    num_heads: int
    head_dim: int
    value_dim: int
    dtype: torch.dtype
    device: torch.device
    has_state: bool
    requires_grad: bool
    num_seqs: int | None = None  # packed sequences (``cu_seqlens``); None when not packed

    @classmethod
    def from_tensors(cls, r: Tensor, v: Tensor, state: Tensor | None, grad: bool, cu_seqlens: Tensor | None = None):
        B, T, H, K = r.shape
        num_seqs = None if cu_seqlens is None else cu_seqlens.numel() - 1
        return cls(B, T, H, K, v.shape[-1], r.dtype, r.device, state is not None, grad, num_seqs)


def state_to_fla(state: Tensor) -> Tensor:
    """Our WKV7 state (BlinkDL's `[..., V, K]`, value index first) as fla's `[..., K, V]`.

    A transpose of the last two axes, returned contiguous (fla's kernels expect that); the values,
    the dtype and the device are unchanged. ``state_from_fla`` is its inverse.

    Shapes:
        state: `[B, H, V, K]` (or `[N, H, V, K]`). Returns `[B, H, K, V]`.

    Example:
        >>> import torch
        >>> s = torch.arange(6.0).view(1, 1, 2, 3)  # V = 2, K = 3
        >>> state_to_fla(s).shape, bool((state_from_fla(state_to_fla(s)) == s).all())
        (torch.Size([1, 1, 3, 2]), True)
    """
    return state.transpose(-1, -2).contiguous()


def state_from_fla(state: Tensor) -> Tensor:
    """fla's RWKV-7 state `[..., K, V]` (``chunk_rwkv7``'s ``initial_state`` / ``final_state``) as ours,
    `[..., V, K]`: the inverse of ``state_to_fla`` (a transpose, returned contiguous).

    Shapes:
        state: `[B, H, K, V]`. Returns `[B, H, V, K]`.
    """
    return state.transpose(-1, -2).contiguous()


def _empty_residual(r: Tensor) -> Tensor:
    return r.new_empty(0, dtype=torch.float32)


def _chunk_for(seq_len) -> int:
    """Chunk size of the ``chunked`` backend: the smallest power of two covering a sequence, up to
    ``DEFAULT_CHUNK_SIZE`` (no padding past the sequence). Written with comparisons only, so a
    symbolic length under ``torch.compile`` becomes guards rather than an error."""
    chunk = 1
    while chunk < DEFAULT_CHUNK_SIZE and chunk < seq_len:
        chunk *= 2
    return chunk


def _chunked_chunk(inputs: WKV7Inputs) -> int:
    if inputs.num_seqs is None:
        return _chunk_for(inputs.seq_len)
    return _chunk_for(-(-inputs.seq_len // max(inputs.num_seqs, 1)))  # the mean sequence length


def _chunked_residual(inputs: WKV7Inputs) -> tuple[tuple[int, ...], torch.dtype]:
    """The chunk states ``chunked_forward`` keeps (none without gradients)."""
    sizes = (inputs.batch, inputs.seq_len, inputs.num_heads, inputs.head_dim, inputs.value_dim)
    shape = entering_shape(*sizes, _chunked_chunk(inputs), inputs.num_seqs, inputs.requires_grad)
    return shape, accumulation_dtype(inputs.dtype)


def _run_chunked(r, w, k, v, a, b, state, *, cu_seqlens, needs_grad):
    chunk = _chunked_chunk(WKV7Inputs.from_tensors(r, v, state, needs_grad, cu_seqlens))
    return chunked_forward(r, w, k, v, a, b, state, chunk=chunk, keep_states=needs_grad, cu_seqlens=cu_seqlens)


def _backward_chunked(r, w, k, v, a, b, state, cu_seqlens, residual, do, ds_final):
    chunk = _chunked_chunk(WKV7Inputs.from_tensors(r, v, state, True, cu_seqlens))
    return chunked_backward(r, w, k, v, a, b, residual, do, ds_final, chunk=chunk, cu_seqlens=cu_seqlens)


def _run_reference(r, w, k, v, a, b, state, *, cu_seqlens, needs_grad):
    o, s = wkv7_reference(r, w, k, v, a, b, state, cu_seqlens=cu_seqlens)
    return o, s, _empty_residual(r)


def _backward_reference(r, w, k, v, a, b, state, cu_seqlens, residual, do, ds_final):
    """Recompute the loop and differentiate it. ``torch.func.vjp``, not ``torch.autograd.grad``: inside
    an op's kernel the dispatcher has already stepped below autograd, so plain autograd would record
    nothing, while functorch's transform tracks the recomputation itself."""
    primals = (r, w, k, v, a, b) + ((state,) if state is not None else ())

    def loop(*args):
        s0 = args[6] if state is not None else None
        return wkv7_reference(*args[:6], s0, cu_seqlens=cu_seqlens)

    (_, s), vjp = torch.func.vjp(loop, *primals)
    grads = vjp((do, ds_final if ds_final is not None else torch.zeros_like(s)))
    return tuple(grads) + ((None,) if state is None else ())


def _run_triton_chunk(r, w, k, v, a, b, state, *, cu_seqlens, needs_grad):
    forward, _ = triton_chunk_ops()
    o, s = forward(r, w, k, v, a, b, state, cu_seqlens)
    return o, s, _empty_residual(r)


def _backward_triton_chunk(r, w, k, v, a, b, state, cu_seqlens, residual, do, ds_final):
    _, backward = triton_chunk_ops()
    return backward(r, w, k, v, a, b, state, cu_seqlens, do, ds_final)


def _run_triton_recurrent(r, w, k, v, a, b, state, *, cu_seqlens, needs_grad):
    o, s = triton_recurrent_op()(r, w, k, v, a, b, state, cu_seqlens)
    return o, s, _empty_residual(r)


def _triton_chunk_reasons(inputs: WKV7Inputs) -> list[str]:
    reasons = triton_reasons(inputs)
    if inputs.device.type == "cuda" and torch.cuda.get_device_capability(inputs.device) < (8, 0):
        reasons.append("needs a GPU of compute capability 8.0 or newer (tf32 tl.dot)")
    return reasons


def _triton_recurrent_reasons(inputs: WKV7Inputs) -> list[str]:
    reasons = triton_reasons(inputs)
    if inputs.requires_grad:
        reasons.append("forward only: inputs require grad")
    return reasons


def _triton_auto_reasons(inputs: WKV7Inputs) -> list[str]:
    if inputs.device.type == "cpu":
        return [f"CPU tensors run under {INTERPRET_ENV}=1 only when requested by name"]
    return []


DECODE_MAX_LEN = 2  # on a CPU the step loop beats the chunked form up to this many tokens
TRITON_DECODE_MAX_LEN = 64  # on CUDA, tokens per sequence up to which the recurrent kernel is preferred


def _prefer(inputs: WKV7Inputs) -> list[str]:
    """Decode vs prefill: one or two tokens on a CPU go to the step-by-step reference; short inputs without
    gradient on CUDA to the fused recurrent kernel."""
    if inputs.device.type == "cpu":
        return ["reference"] if inputs.seq_len <= DECODE_MAX_LEN else []
    per_seq = inputs.seq_len if inputs.num_seqs is None else inputs.seq_len / max(inputs.num_seqs, 1)
    if per_seq <= TRITON_DECODE_MAX_LEN and not inputs.requires_grad:
        return ["triton_recurrent"]
    return []


wkv7_dispatcher = Dispatcher(
    "wkv7",
    ENV_VAR,
    prefer=_prefer,
    context=interpreting,
    backends=[
        Backend(
            "triton_chunk",
            _run_triton_chunk,
            unsupported_reasons=_triton_chunk_reasons,
            probe=triton_probe,
            description="Triton, 16-token chunks (WY/UT form) with the state on chip; forward and backward",
            auto_reasons=_triton_auto_reasons,
            backward=_backward_triton_chunk,
        ),
        Backend(
            "triton_recurrent",
            _run_triton_recurrent,
            unsupported_reasons=_triton_recurrent_reasons,
            probe=triton_probe,
            description="Triton, token by token with the state in registers; forward only (decoding)",
            auto_reasons=_triton_auto_reasons,
        ),
        Backend(
            "chunked",
            _run_chunked,
            description="chunked PyTorch (WY/UT form, 16-token chunks), hand-written linear-memory backward",
            backward=_backward_chunked,
            residual=_chunked_residual,
        ),
        Backend(
            "reference",
            _run_reference,
            description="step-by-step recurrence; backward recomputes it under torch.func.vjp (oracle; always accepts)",
            backward=_backward_reference,
        ),
    ],
)


def _validate(r, w, k, v, a, b, state, *, cu_seqlens, validate: bool | None) -> None:
    named = {"r": r, "w": w, "k": k, "v": v, "a": a, "b": b}
    if state is not None:
        named["state"] = state
    for name, x in named.items():
        if not isinstance(x, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if r.dim() != 4:
        raise shape_error("r", "[B, T, H, K] (4-D)", r)
    B, T, H, K = r.shape
    for name in ("w", "k", "a", "b"):
        if named[name].shape != r.shape:
            raise shape_error(name, f"[B, T, H, K] = {tuple(r.shape)} like r", named[name])
    if v.dim() != 4 or v.shape[:3] != r.shape[:3]:
        raise shape_error("v", f"[B, T, H, V] = [{B}, {T}, {H}, V] matching r", v)
    V = v.shape[-1]
    if not (r.dtype == k.dtype == v.dtype == a.dtype == b.dtype):
        raise ValueError(
            f"r, k, v, a and b must share a dtype, got {r.dtype}, {k.dtype}, {v.dtype}, {a.dtype}, {b.dtype}"
        )
    acc = accumulation_dtype(r.dtype)
    if state is not None and state.dtype not in (torch.float32, acc):
        raise ValueError(f"state must be float32 (float64 with float64 inputs), got {state.dtype}")
    devices = [(name, x.device) for name, x in named.items()]
    if any(d != r.device for _, d in devices):
        listing = ", ".join(f"{n} on {d}" for n, d in devices)
        raise ValueError(f"all inputs must be on one device, got {listing}")
    if cu_seqlens is not None:
        N = check_cu_seqlens(cu_seqlens, r, validate)
        if state is not None and state.shape != (N, H, V, K):
            raise shape_error("state", f"[N, H, V, K] = [{N}, {H}, {V}, {K}] (one per packed sequence)", state)
    elif state is not None and state.shape != (B, H, V, K):
        raise shape_error("state", f"[B, H, V, K] = [{B}, {H}, {V}, {K}] (value index first)", state)
    if w.numel() and check_values(w, validate):
        w_max = torch.amax(w.detach()).item()  # one reduction, no temporary the size of w
        if not w_max <= 0:  # NaN fails too
            raise ValueError(f"w is the log of the decay and must be <= 0 everywhere; got max {w_max:.4g}")


def _select(r: Tensor, v: Tensor, state, cu_seqlens, backend: str | None, needs_grad: bool) -> Backend:
    """The backend of one op call, from metadata only (the real kernel, the fake kernel and the autograd
    context all ask, and must agree)."""
    inputs = WKV7Inputs.from_tensors(r, v, state, needs_grad, cu_seqlens)
    return wkv7_dispatcher.resolve(inputs, backend, device_key=f"{r.device.type}/{r.dtype}")


def _fresh(x: Tensor) -> Tensor:
    """Outputs of an op are contiguous, as its fake kernel promises."""
    return x.contiguous()


@torch.library.custom_op("rwkvblocks::wkv7", mutates_args=())
def _wkv7_op(
    r: Tensor,
    w: Tensor,
    k: Tensor,
    v: Tensor,
    a: Tensor,
    b: Tensor,
    state: Tensor | None,
    cu_seqlens: Tensor | None,
    backend: str | None,
    needs_grad: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Dispatching WKV7 forward: ``(o, final_state, residual)``, ``residual`` being what the chosen
    backend keeps for its backward (empty for most)."""
    chosen = _select(r, v, state, cu_seqlens, backend, needs_grad)
    o, s, residual = chosen.run(r, w, k, v, a, b, state, cu_seqlens=cu_seqlens, needs_grad=needs_grad)
    return _fresh(o), _fresh(s), _fresh(residual)


@_wkv7_op.register_fake
def _wkv7_fake(r, w, k, v, a, b, state, cu_seqlens, backend, needs_grad):
    chosen = _select(r, v, state, cu_seqlens, backend, needs_grad)
    B, _, H, K = r.shape
    N = B if cu_seqlens is None else cu_seqlens.shape[0] - 1
    o = r.new_empty(v.shape)
    s = r.new_empty(N, H, v.shape[-1], K, dtype=accumulation_dtype(r.dtype))
    if chosen.residual is None:
        return o, s, _empty_residual(r)
    shape, dtype = chosen.residual(WKV7Inputs.from_tensors(r, v, state, needs_grad, cu_seqlens))
    return o, s, r.new_empty(shape, dtype=dtype)


@torch.library.custom_op("rwkvblocks::wkv7_backward", mutates_args=())
def _wkv7_backward_op(
    r: Tensor,
    w: Tensor,
    k: Tensor,
    v: Tensor,
    a: Tensor,
    b: Tensor,
    state: Tensor | None,
    cu_seqlens: Tensor | None,
    residual: Tensor,
    do: Tensor,
    ds_final: Tensor | None,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients ``(dr, dw, dk, dv, da, db, dstate)`` from the backend that ran the forward (named by
    ``backend``); ``dstate`` is empty when there was no initial state."""
    chosen = _select(r, v, state, cu_seqlens, backend, True)
    if chosen.backward is None:
        raise BackendUnavailableError(f"wkv7: backend {chosen.name!r} has no backward")
    *grads, ds0 = chosen.backward(r, w, k, v, a, b, state, cu_seqlens, residual, do, ds_final)
    grads = [g.to(x.dtype) for g, x in zip(grads, (r, w, k, v, a, b), strict=True)]
    ds0 = ds0.to(state.dtype) if state is not None else _empty_residual(r)
    return tuple(_fresh(g) for g in (*grads, ds0))


@_wkv7_backward_op.register_fake
def _wkv7_backward_fake(r, w, k, v, a, b, state, cu_seqlens, residual, do, ds_final, backend):
    grads = [torch.empty(x.shape, dtype=x.dtype, device=x.device) for x in (r, w, k, v, a, b)]
    ds0 = torch.empty(state.shape, dtype=state.dtype, device=state.device) if state is not None else _empty_residual(r)
    return (*grads, ds0)


def _wkv7_setup_context(ctx, inputs, output):
    r, w, k, v, a, b, state, cu_seqlens, backend, needs_grad = inputs
    residual = output[2]
    ctx.save_for_backward(r, w, k, v, a, b, state, cu_seqlens, residual)
    ctx.backend = _select(r, v, state, cu_seqlens, backend, needs_grad).name
    ctx.mark_non_differentiable(residual)
    ctx.set_materialize_grads(False)  # an unused output's cotangent stays None: no zeros allocated


def _wkv7_differentiate(ctx, do, ds_final, _):
    r, w, k, v, a, b, state, cu_seqlens, residual = ctx.saved_tensors
    if do is None:  # only the final state is used
        do = torch.zeros_like(v)
    *grads, ds0 = _wkv7_backward_op(r, w, k, v, a, b, state, cu_seqlens, residual, do, ds_final, ctx.backend)
    return (*grads, ds0 if state is not None else None, None, None, None)


_wkv7_op.register_autograd(_wkv7_differentiate, setup_context=_wkv7_setup_context)

OP_NAMES = ("rwkvblocks::wkv7", "rwkvblocks::wkv7_backward")


def _inline_under_compile(r: Tensor, backend: str | None, cu_seqlens: Tensor | None) -> bool:
    """Whether a compiled graph traces the plain recurrence instead of the op: a CPU decode step without
    gradients (what the automatic choice would run anyway), so that the compiler fuses its few small
    element-wise ops with their neighbours rather than calling out to an opaque op."""
    return (
        r.device.type == "cpu"
        and r.shape[1] <= DECODE_MAX_LEN
        and cu_seqlens is None
        and backend in (None, "reference")
        and not os.environ.get(ENV_VAR)
    )


def _wkv7(r, w, k, v, a, b, state, backend, cu_seqlens):
    if r.shape[1] == 0:  # before the op: its outputs may not alias the state
        B, _, H, K = r.shape
        N = B if cu_seqlens is None else cu_seqlens.shape[0] - 1
        acc = accumulation_dtype(r.dtype)
        final = state.to(acc, copy=True) if state is not None else r.new_zeros(N, H, v.shape[-1], K, dtype=acc)
        return v.new_empty(v.shape), final
    inputs = (r, w, k, v, a, b, state)
    needs_grad = torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in inputs)
    if not needs_grad:
        if not torch.compiler.is_compiling():
            # Eager inference: the op boundary serves autograd and graphs, neither of which is here, and
            # costs more than a one-token CPU step itself. Same backend, same kernel.
            chosen = _select(r, v, state, cu_seqlens, backend, False)
            o, s, _ = chosen.run(*inputs, cu_seqlens=cu_seqlens, needs_grad=False)
            return o, s
        if _inline_under_compile(r, backend, cu_seqlens):
            return wkv7_reference(*inputs)
    o, s, _ = _wkv7_op(*inputs, cu_seqlens, backend, needs_grad)
    return o, s


def wkv7(
    r: Tensor,
    w: Tensor,
    k: Tensor,
    v: Tensor,
    a: Tensor,
    b: Tensor,
    state: Tensor | None = None,
    *,
    cu_seqlens: Tensor | None = None,
    backend: str | None = None,
    validate: bool | None = None,
) -> tuple[Tensor, Tensor]:
    """RWKV-7 WKV: linear attention whose state transition is a diagonal decay plus a rank-one update.

    Per head, with state ``S`` `[V, K]` (value index first; initial ``state`` or zeros):
    ``S_t = S_{t-1} (diag(exp(w_t)) + a_t b_t^T) + v_t k_t^T`` and ``o_t = S_t r_t``, read **after** the
    update; no bonus and no ``1/sqrt(K)`` scale. RWKV-7 blocks pass ``a = -kk`` and ``b = kk * a_gate``
    with ``kk`` L2-normalised per head (the transition is then a contraction).

    One registered op, ``torch.ops.rwkvblocks.wkv7`` (fake kernel and autograd included, backward
    ``rwkvblocks::wkv7_backward``): ``torch.compile(fullgraph=True)`` and CUDA graphs see a single
    node, and the backend is chosen inside it from metadata alone. Two calls skip the op boundary:
    eager calls without gradients run the chosen backend directly, and a compiled CPU decode step
    (``T <= DECODE_MAX_LEN``, no gradients, no forced backend) traces the plain recurrence.

    Args:
        r: Receptance.
        w: Log-decay, ``<= 0`` (RWKV-7: ``-exp(-0.5) * sigmoid(z)``, in ``(-0.6065, 0)``; ideally fp32).
        k: Key.
        v: Value.
        a, b: The rank-one part of the transition (``a_t b_t^T``).
        state: Initial state, or ``None`` for zeros. Our layout is BlinkDL's `[V, K]` per head; fla
            stores the transpose (``state_to_fla`` / ``state_from_fla`` convert).
        cu_seqlens: Packed variable-length sequences (FlashAttention convention): ``B = 1`` and the
            int32/int64 boundaries ``[0, T_1, T_1 + T_2, ..., T]``; the state resets at every boundary
            and one final state per sequence is returned.
        backend: ``"triton_chunk"``, ``"triton_recurrent"``, ``"chunked"`` or ``"reference"`` (or any
            registered backend); ``None`` picks automatically (see the
            module docstring).
        validate: Checks that read values (``w <= 0``, the ``cu_seqlens`` boundaries): ``None`` runs
            them on CPU tensors outside ``torch.compile`` only (no device sync), ``True`` everywhere,
            ``False`` never (see ``rwkvblocks.ops.check_values``).

    Shapes:
        r, w, k, a, b: `[B, T, H, K]`; v: `[B, T, H, V]`; state: `[B, H, V, K]` fp32 (fp64 for fp64
        inputs; `[N, H, V, K]` with ``cu_seqlens`` `[N+1]`). Returns ``(o, final_state)``: o
        `[B, T, H, V]` in the dtype of ``r``; the final state `[B, H, V, K]` (`[N, H, V, K]`) in fp32
        (fp64 for fp64 inputs).

    Reference: ``wkv7_reference``. Backends: ``triton_chunk``, ``triton_recurrent``, ``chunked``,
    ``reference``.

    Raises:
        ValueError: wrong rank or shape, mismatched dtypes or devices, bad ``cu_seqlens`` (not an int
            tensor on r's device, ``B != 1``) and, when values are checked, ``w > 0`` or ``cu_seqlens``
            not from 0 to T or decreasing.
        BackendUnavailableError: the requested backend cannot run this input.

    Example:
        >>> import torch
        >>> import torch.nn.functional as F
        >>> from rwkvblocks.ops import wkv7
        >>> B, T, H, K = 1, 5, 2, 16
        >>> r, k, v = (torch.randn(B, T, H, K) for _ in range(3))
        >>> w = -0.6 * torch.rand(B, T, H, K)
        >>> kk = F.normalize(torch.randn(B, T, H, K), dim=-1)
        >>> o, state = wkv7(r, w, k, v, -kk, kk * torch.rand(B, T, H, K))
        >>> o.shape, state.shape
        (torch.Size([1, 5, 2, 16]), torch.Size([1, 2, 16, 16]))
    """
    _validate(r, w, k, v, a, b, state, cu_seqlens=cu_seqlens, validate=validate)
    return _wkv7(r, w, k, v, a, b, state, backend, cu_seqlens)
