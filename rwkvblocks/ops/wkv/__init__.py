"""The WKV operator of RWKV-5/6: checked entry points ``wkv6`` / ``wkv5`` and their backends.

The math is in ``README.md`` beside this file. Backends, in order of automatic preference:

- ``triton_chunk`` (``wkv6_triton_chunk``): Triton, chunks of 16 tokens streamed with the state
  on chip, forward and backward; the default for prefill and training on CUDA tensors.
- ``triton_chunk64`` (``triton_chunk64.py``): Triton, 64-token chunks processed in parallel (one
  serial scan over chunk states), forward and backward. Verified under the interpreter only and
  never timed on a GPU, so automatic selection never picks it: request it by name.
- ``triton_recurrent`` (``wkv6_triton_recurrent``): Triton, one token at a time with the state in
  registers, forward only; preferred on CUDA for decoding (at most ``TRITON_DECODE_MAX_LEN``
  tokens per sequence, no gradient).
- ``chunked`` (``wkv6_chunked``): chunked PyTorch with a hand-written, linear-memory backward;
  the default on a CPU.
- ``reference`` (``wkv6_reference``): one token at a time; the oracle, always accepts. Automatic
  selection also prefers it for decoding on a CPU (``T <= DECODE_MAX_LEN``), where it is faster.

The Triton backends need CUDA tensors; with ``TRITON_INTERPRET=1`` (set before the first call)
they also run CPU tensors through the Triton interpreter, but only when asked for by name:
automatic selection on a CPU never picks them. Every backend accepts packed sequences
(``cu_seqlens``). Choose one explicitly with ``backend=`` or the ``RWKVBLOCKS_WKV_BACKEND``
environment variable.

Both entry points check metadata in Python (traceable by ``torch.compile``) and call one registered
op, ``rwkvblocks::wkv6`` (``wkv5`` passes its static decay as a broadcast view). Inside it the
dispatcher picks the backend from metadata; the op returns, besides ``o`` and the final state, what
that backend keeps for its backward (``Backend.residual``), and its autograd formula calls
``rwkvblocks::wkv6_backward``, which runs the same backend's ``Backend.backward``. The Triton kernels
are ``torch.library.triton_op``s of their own, registered on first use (registering imports Triton).
Calls that need neither autograd nor a graph (eager inference) run the chosen backend without the op
boundary, whose cost exceeds a one-token CPU step; a compiled CPU decode step traces the plain
recurrence, so the compiler fuses it with its neighbours.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import Tensor

from .._checks import check_cu_seqlens, check_values, shape_error
from .._dispatch import Backend, BackendUnavailableError, Dispatcher
from ._triton_common import INTERPRET_ENV, interpreting, triton_probe, triton_reasons
from .chunked import DEFAULT_CHUNK_SIZE, chunked_backward, chunked_forward, entering_shape, wkv6_chunked
from .reference import accumulation_dtype, wkv6_reference
from .triton_chunk import triton_chunk_ops, wkv6_triton_chunk
from .triton_chunk64 import triton_chunk64_ops
from .triton_recurrent import triton_recurrent_op, wkv6_triton_recurrent

__all__ = [
    "BackendUnavailableError",
    "OP_NAMES",
    "WKVInputs",
    "wkv5",
    "wkv6",
    "wkv6_chunked",
    "wkv6_reference",
    "wkv6_triton_chunk",
    "wkv6_triton_recurrent",
    "wkv_dispatcher",
]

ENV_VAR = "RWKVBLOCKS_WKV_BACKEND"


@dataclass(frozen=True)
class WKVInputs:
    """What a backend needs to know about a (validated) WKV call to accept or refuse it."""

    batch: int
    seq_len: int
    num_heads: int
    head_dim: int
    value_dim: int
    dtype: torch.dtype
    device: torch.device
    reverse: bool
    has_state: bool
    requires_grad: bool
    num_seqs: int | None = None  # packed sequences (``cu_seqlens``); None when not packed

    @classmethod
    def from_tensors(
        cls,
        r: Tensor,
        v: Tensor,
        state: Tensor | None,
        reverse: bool,
        grad: bool,
        cu_seqlens: Tensor | None = None,
    ):
        B, T, H, K = r.shape
        num_seqs = None if cu_seqlens is None else cu_seqlens.numel() - 1
        return cls(B, T, H, K, v.shape[-1], r.dtype, r.device, reverse, state is not None, grad, num_seqs)


def _chunk_for(seq_len) -> int:
    """Chunk size of the ``chunked`` backend: the smallest power of two covering a sequence, up to
    ``DEFAULT_CHUNK_SIZE`` (no padding past the sequence). Written with comparisons only, so a
    symbolic length under ``torch.compile`` becomes guards rather than an error."""
    chunk = 1
    while chunk < DEFAULT_CHUNK_SIZE and chunk < seq_len:
        chunk *= 2
    return chunk


def _chunked_chunk(inputs: WKVInputs) -> int:
    if inputs.num_seqs is None:
        return _chunk_for(inputs.seq_len)
    return _chunk_for(-(-inputs.seq_len // max(inputs.num_seqs, 1)))  # the mean sequence length


def _chunked_residual(inputs: WKVInputs) -> tuple[tuple[int, ...], torch.dtype]:
    """The chunk states ``chunked_forward`` keeps (none without gradients)."""
    sizes = (inputs.batch, inputs.seq_len, inputs.num_heads, inputs.head_dim, inputs.value_dim)
    shape = entering_shape(*sizes, _chunked_chunk(inputs), inputs.num_seqs, inputs.requires_grad)
    return shape, accumulation_dtype(inputs.dtype)


def _empty_residual(r: Tensor) -> Tensor:
    return r.new_empty(0, dtype=torch.float32)


def _run_chunked(r, k, v, w, u, state, *, reverse, cu_seqlens, needs_grad):
    chunk = _chunked_chunk(WKVInputs.from_tensors(r, v, state, reverse, needs_grad, cu_seqlens))
    return chunked_forward(
        r, k, v, w, u, state, reverse=reverse, chunk=chunk, keep_states=needs_grad, cu_seqlens=cu_seqlens
    )


def _backward_chunked(r, k, v, w, u, state, cu_seqlens, residual, do, ds_final, *, reverse):
    chunk = _chunked_chunk(WKVInputs.from_tensors(r, v, state, reverse, True, cu_seqlens))
    return chunked_backward(r, k, v, w, u, residual, do, ds_final, reverse=reverse, chunk=chunk, cu_seqlens=cu_seqlens)


def _run_reference(r, k, v, w, u, state, *, reverse, cu_seqlens, needs_grad):
    o, s = wkv6_reference(r, k, v, w, u, state, reverse=reverse, cu_seqlens=cu_seqlens)
    return o, s, _empty_residual(r)


def _backward_reference(r, k, v, w, u, state, cu_seqlens, residual, do, ds_final, *, reverse):
    """Recompute the loop and differentiate it. ``torch.func.vjp``, not ``torch.autograd.grad``: inside
    an op's kernel the dispatcher has already stepped below autograd, so plain autograd would record
    nothing, while functorch's transform tracks the recomputation itself."""
    primals = (r, k, v, w, u) + ((state,) if state is not None else ())

    def loop(*args):
        s0 = args[5] if state is not None else None
        return wkv6_reference(*args[:5], s0, reverse=reverse, cu_seqlens=cu_seqlens)

    (_, s), vjp = torch.func.vjp(loop, *primals)
    grads = vjp((do, ds_final if ds_final is not None else torch.zeros_like(s)))
    return tuple(grads) + ((None,) if state is None else ())


def _run_triton_chunk(r, k, v, w, u, state, *, reverse, cu_seqlens, needs_grad):
    forward, _ = triton_chunk_ops()
    o, s = forward(r, k, v, w, u, state, cu_seqlens, reverse)
    return o, s, _empty_residual(r)


def _backward_triton_chunk(r, k, v, w, u, state, cu_seqlens, residual, do, ds_final, *, reverse):
    _, backward = triton_chunk_ops()
    return backward(r, k, v, w, u, state, cu_seqlens, do, ds_final, reverse)


def _run_triton_chunk64(r, k, v, w, u, state, *, reverse, cu_seqlens, needs_grad):
    forward, _ = triton_chunk64_ops()
    o, s = forward(r, k, v, w, u, state, cu_seqlens, reverse)
    return o, s, _empty_residual(r)


def _backward_triton_chunk64(r, k, v, w, u, state, cu_seqlens, residual, do, ds_final, *, reverse):
    _, backward = triton_chunk64_ops()
    return backward(r, k, v, w, u, state, cu_seqlens, do, ds_final, reverse)


def _run_triton_recurrent(r, k, v, w, u, state, *, reverse, cu_seqlens, needs_grad):
    o, s = triton_recurrent_op()(r, k, v, w, u, state, cu_seqlens, reverse)
    return o, s, _empty_residual(r)


def _triton_chunk_reasons(inputs: WKVInputs) -> list[str]:
    reasons = triton_reasons(inputs)
    if inputs.device.type == "cuda" and torch.cuda.get_device_capability(inputs.device) < (8, 0):
        reasons.append("needs a GPU of compute capability 8.0 or newer (tf32 tl.dot)")
    return reasons


def _triton_recurrent_reasons(inputs: WKVInputs) -> list[str]:
    reasons = triton_reasons(inputs)
    if inputs.requires_grad:
        reasons.append("forward only: inputs require grad")
    return reasons


def _triton_auto_reasons(inputs: WKVInputs) -> list[str]:
    if inputs.device.type == "cpu":
        return [f"CPU tensors run under {INTERPRET_ENV}=1 only when requested by name"]
    return []


def _triton_chunk64_auto_reasons(inputs: WKVInputs) -> list[str]:
    return ["never timed on a GPU: runs only when requested by name"]


DECODE_MAX_LEN = 2  # on a CPU the step loop beats the chunked form up to this many tokens
TRITON_DECODE_MAX_LEN = 64  # on CUDA, tokens per sequence up to which the recurrent kernel is preferred


def _prefer(inputs: WKVInputs) -> list[str]:
    """Decode vs prefill: one or two tokens on a CPU go to the step-by-step reference; short
    inputs without gradient on CUDA to the fused recurrent kernel."""
    if inputs.device.type == "cpu":
        return ["reference"] if inputs.seq_len <= DECODE_MAX_LEN else []
    per_seq = inputs.seq_len if inputs.num_seqs is None else inputs.seq_len / max(inputs.num_seqs, 1)
    if per_seq <= TRITON_DECODE_MAX_LEN and not inputs.requires_grad:
        return ["triton_recurrent"]
    return []


wkv_dispatcher = Dispatcher(
    "wkv",
    ENV_VAR,
    prefer=_prefer,
    context=interpreting,
    backends=[
        Backend(
            "triton_chunk",
            _run_triton_chunk,
            unsupported_reasons=_triton_chunk_reasons,
            probe=triton_probe,
            description="Triton, 16-token chunks streamed with the state on chip; forward and backward",
            auto_reasons=_triton_auto_reasons,
            backward=_backward_triton_chunk,
        ),
        Backend(
            "triton_chunk64",
            _run_triton_chunk64,
            unsupported_reasons=_triton_chunk_reasons,
            probe=triton_probe,
            description="Triton, 64-token chunks in parallel with a scan over chunk states; forward and backward",
            auto_reasons=_triton_chunk64_auto_reasons,
            backward=_backward_triton_chunk64,
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
            description="chunked PyTorch, hand-written linear-memory backward (any device)",
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


def _validate(r, k, v, w, u, state, *, static_w: bool, cu_seqlens, validate: bool | None) -> None:
    named = {"r": r, "k": k, "v": v, "w": w, "u": u}
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
    if k.shape != r.shape:
        raise shape_error("k", f"[B, T, H, K] = {tuple(r.shape)} like r", k)
    if v.dim() != 4 or v.shape[:3] != r.shape[:3]:
        raise shape_error("v", f"[B, T, H, V] = [{B}, {T}, {H}, V] matching r", v)
    V = v.shape[-1]
    if static_w:
        if w.shape != (H, K):
            raise shape_error("w", f"[H, K] = [{H}, {K}] (static RWKV-5 log-decay)", w)
    elif w.shape != r.shape:
        raise shape_error("w", f"[B, T, H, K] = {tuple(r.shape)} like r (per-token log-decay)", w)
    if u.shape != (H, K):
        raise shape_error("u", f"[H, K] = [{H}, {K}]", u)
    if not (r.dtype == k.dtype == v.dtype):
        raise ValueError(f"r, k and v must share a dtype, got {r.dtype}, {k.dtype}, {v.dtype}")
    acc = accumulation_dtype(r.dtype)
    if state is not None and state.dtype not in (torch.float32, acc):
        raise ValueError(f"state must be float32 (float64 with float64 inputs), got {state.dtype}")
    devices = [(name, x.device) for name, x in named.items()]
    if any(d != r.device for _, d in devices):
        listing = ", ".join(f"{n} on {d}" for n, d in devices)
        raise ValueError(f"all inputs must be on one device, got {listing}")
    if cu_seqlens is not None:
        N = check_cu_seqlens(cu_seqlens, r, validate)
        if state is not None and state.shape != (N, H, K, V):
            raise shape_error("state", f"[N, H, K, V] = [{N}, {H}, {K}, {V}] (one per packed sequence)", state)
    elif state is not None and state.shape != (B, H, K, V):
        raise shape_error("state", f"[B, H, K, V] = [{B}, {H}, {K}, {V}]", state)
    if w.numel() and check_values(w, validate):
        w_max = torch.amax(w.detach()).item()  # one reduction, no temporary the size of w
        if w_max > 0:
            raise ValueError(f"w is the log of the decay and must be <= 0 everywhere; got max {w_max:.4g}")


def _select(r: Tensor, v: Tensor, state, cu_seqlens, reverse: bool, backend: str | None, needs_grad: bool) -> Backend:
    """The backend of one op call, from metadata only (the real kernel, the fake kernel and the autograd
    context all ask, and must agree)."""
    inputs = WKVInputs.from_tensors(r, v, state, reverse, needs_grad, cu_seqlens)
    return wkv_dispatcher.resolve(inputs, backend, device_key=f"{r.device.type}/{r.dtype}")


def _fresh(x: Tensor) -> Tensor:
    """Outputs of an op are contiguous, as its fake kernel promises."""
    return x.contiguous()


@torch.library.custom_op("rwkvblocks::wkv6", mutates_args=())
def _wkv6_op(
    r: Tensor,
    k: Tensor,
    v: Tensor,
    w: Tensor,
    u: Tensor,
    state: Tensor | None,
    cu_seqlens: Tensor | None,
    reverse: bool,
    backend: str | None,
    needs_grad: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Dispatching WKV forward: ``(o, final_state, residual)``, ``residual`` being what the chosen
    backend keeps for its backward (the chunk states of ``chunked``; empty for the others)."""
    chosen = _select(r, v, state, cu_seqlens, reverse, backend, needs_grad)
    o, s, residual = chosen.run(r, k, v, w, u, state, reverse=reverse, cu_seqlens=cu_seqlens, needs_grad=needs_grad)
    return _fresh(o), _fresh(s), _fresh(residual)


@_wkv6_op.register_fake
def _wkv6_fake(r, k, v, w, u, state, cu_seqlens, reverse, backend, needs_grad):
    chosen = _select(r, v, state, cu_seqlens, reverse, backend, needs_grad)
    B, _, H, K = r.shape
    N = B if cu_seqlens is None else cu_seqlens.shape[0] - 1
    o = r.new_empty(v.shape)
    s = r.new_empty(N, H, K, v.shape[-1], dtype=accumulation_dtype(r.dtype))
    if chosen.residual is None:
        return o, s, _empty_residual(r)
    shape, dtype = chosen.residual(WKVInputs.from_tensors(r, v, state, reverse, needs_grad, cu_seqlens))
    return o, s, r.new_empty(shape, dtype=dtype)


@torch.library.custom_op("rwkvblocks::wkv6_backward", mutates_args=())
def _wkv6_backward_op(
    r: Tensor,
    k: Tensor,
    v: Tensor,
    w: Tensor,
    u: Tensor,
    state: Tensor | None,
    cu_seqlens: Tensor | None,
    residual: Tensor,
    do: Tensor,
    ds_final: Tensor | None,
    reverse: bool,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients ``(dr, dk, dv, dw, du, dstate)`` from the backend that ran the forward (named by
    ``backend``); ``dstate`` is empty when there was no initial state."""
    chosen = _select(r, v, state, cu_seqlens, reverse, backend, True)
    if chosen.backward is None:
        raise BackendUnavailableError(f"wkv: backend {chosen.name!r} has no backward")
    dr, dk, dv, dw, du, ds0 = chosen.backward(r, k, v, w, u, state, cu_seqlens, residual, do, ds_final, reverse=reverse)
    ds0 = ds0.to(state.dtype) if state is not None else _empty_residual(r)
    return tuple(_fresh(g) for g in (dr, dk, dv, dw, du, ds0))


@_wkv6_backward_op.register_fake
def _wkv6_backward_fake(r, k, v, w, u, state, cu_seqlens, residual, do, ds_final, reverse, backend):
    grads = [torch.empty(x.shape, dtype=x.dtype, device=x.device) for x in (r, k, v, w, u)]
    ds0 = torch.empty(state.shape, dtype=state.dtype, device=state.device) if state is not None else _empty_residual(r)
    return (*grads, ds0)


def _wkv6_setup_context(ctx, inputs, output):
    r, k, v, w, u, state, cu_seqlens, reverse, backend, needs_grad = inputs
    residual = output[2]
    ctx.save_for_backward(r, k, v, w, u, state, cu_seqlens, residual)
    ctx.reverse = reverse
    ctx.backend = _select(r, v, state, cu_seqlens, reverse, backend, needs_grad).name
    ctx.mark_non_differentiable(residual)
    ctx.set_materialize_grads(False)  # an unused output's cotangent stays None: no zeros allocated


def _wkv6_differentiate(ctx, do, ds_final, _):
    r, k, v, w, u, state, cu_seqlens, residual = ctx.saved_tensors
    if do is None:  # only the final state is used
        do = torch.zeros_like(v)
    *grads, ds0 = _wkv6_backward_op(r, k, v, w, u, state, cu_seqlens, residual, do, ds_final, ctx.reverse, ctx.backend)
    return (*grads, ds0 if state is not None else None, None, None, None, None)


_wkv6_op.register_autograd(_wkv6_differentiate, setup_context=_wkv6_setup_context)

OP_NAMES = ("rwkvblocks::wkv6", "rwkvblocks::wkv6_backward")


def _wkv(r, k, v, w, u, state, reverse, backend, cu_seqlens):
    if r.shape[1] == 0:  # before the op: its outputs may not alias the state
        B, _, H, K = r.shape
        N = B if cu_seqlens is None else cu_seqlens.shape[0] - 1
        acc = accumulation_dtype(r.dtype)
        final = state.to(acc) if state is not None else r.new_zeros(N, H, K, v.shape[-1], dtype=acc)
        return v.new_empty(v.shape), final
    needs_grad = torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in (r, k, v, w, u, state))
    if not needs_grad:
        if not torch.compiler.is_compiling():
            # Eager inference: the op boundary serves autograd and graphs, neither of which is here, and
            # costs more than a one-token CPU step itself. Same backend, same kernel.
            chosen = _select(r, v, state, cu_seqlens, reverse, backend, needs_grad)
            o, s, _ = chosen.run(r, k, v, w, u, state, reverse=reverse, cu_seqlens=cu_seqlens, needs_grad=False)
            return o, s
        if _inline_under_compile(r, backend, cu_seqlens):
            return wkv6_reference(r, k, v, w, u, state, reverse=reverse)
    o, s, _ = _wkv6_op(r, k, v, w, u, state, cu_seqlens, reverse, backend, needs_grad)
    return o, s


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


def wkv6(
    r: Tensor,
    k: Tensor,
    v: Tensor,
    w: Tensor,
    u: Tensor,
    state: Tensor | None = None,
    *,
    reverse: bool = False,
    cu_seqlens: Tensor | None = None,
    backend: str | None = None,
    validate: bool | None = None,
) -> tuple[Tensor, Tensor]:
    """RWKV-6 WKV: linear attention with a per-token, per-channel decay and a bonus ``u``.

    Per head, with state ``S`` `[K, V]` (initial ``state`` or zeros):
    ``o_t = r_t (S_{t-1} + diag(u) k_t v_t^T)`` and ``S_t = diag(exp(w_t)) S_{t-1} + k_t v_t^T``.
    No ``1/sqrt(K)`` scale. ``reverse=True`` runs time backwards (``o_t`` depends on tokens
    ``t..T-1``) without flipping any input.

    One registered op, ``torch.ops.rwkvblocks.wkv6`` (fake kernel and autograd included, backward
    ``rwkvblocks::wkv6_backward``): ``torch.compile(fullgraph=True)`` and CUDA graphs see a single
    node, and the backend is chosen inside it from metadata alone. Two calls skip the op boundary:
    eager calls without gradients run the chosen backend directly, and a compiled CPU decode step
    (``T <= DECODE_MAX_LEN``, no gradients, no forced backend) traces the plain recurrence.

    Args:
        r, k: Receptance and key.
        v: Value.
        w: Log-decay, ``<= 0`` (RWKV-6: ``-exp(time_decay + lora(x))``, ideally fp32).
        u: Bonus for the current token (``time_faaaa``).
        state: Initial state, or ``None`` for zeros.
        reverse: Run time backwards (each packed sequence backwards on its own).
        cu_seqlens: Packed variable-length sequences (FlashAttention convention): ``B = 1``
            and the int32/int64 boundaries ``[0, T_1, T_1 + T_2, ..., T]``; the state resets
            at every boundary and one final state per sequence is returned.
        backend: ``"triton_chunk"``, ``"triton_chunk64"``, ``"triton_recurrent"``, ``"chunked"`` or
            ``"reference"`` (or any registered backend); ``None`` picks automatically (see the module docstring).
        validate: Checks that read values (``w <= 0``, the ``cu_seqlens`` boundaries): ``None`` runs
            them on CPU tensors outside ``torch.compile`` only (no device sync), ``True`` everywhere,
            ``False`` never (see ``rwkvblocks.ops.check_values``).

    Shapes:
        r, k, w: `[B, T, H, K]`; v: `[B, T, H, V]`; u: `[H, K]`; state: `[B, H, K, V]` fp32
        (`[N, H, K, V]` with ``cu_seqlens`` `[N+1]`). Returns ``(o, final_state)``:
        o `[B, T, H, V]` in the dtype of ``r``; the final state `[B, H, K, V]` (`[N, H, K, V]`)
        in fp32 (fp64 for fp64 inputs).

    Reference: ``wkv6_reference``. Backends: ``triton_chunk``, ``triton_chunk64``,
    ``triton_recurrent``, ``chunked``, ``reference``.

    Raises:
        ValueError: wrong rank or shape, mismatched dtypes or devices, bad ``cu_seqlens`` (not an int
            tensor on r's device, ``B != 1``) and, when values are checked, ``w > 0`` or ``cu_seqlens``
            not from 0 to T or decreasing.
        BackendUnavailableError: the requested backend cannot run this input.

    Example:
        >>> import torch
        >>> from rwkvblocks.ops import wkv6
        >>> B, T, H, K = 1, 5, 2, 16
        >>> r, k, v = (torch.randn(B, T, H, K) for _ in range(3))
        >>> w = -torch.rand(B, T, H, K)
        >>> o, state = wkv6(r, k, v, w, u=torch.zeros(H, K))
        >>> o.shape, state.shape
        (torch.Size([1, 5, 2, 16]), torch.Size([1, 2, 16, 16]))
    """
    _validate(r, k, v, w, u, state, static_w=False, cu_seqlens=cu_seqlens, validate=validate)
    return _wkv(r, k, v, w, u, state, reverse, backend, cu_seqlens)


def wkv5(
    r: Tensor,
    k: Tensor,
    v: Tensor,
    w: Tensor,
    u: Tensor,
    state: Tensor | None = None,
    *,
    reverse: bool = False,
    cu_seqlens: Tensor | None = None,
    backend: str | None = None,
    validate: bool | None = None,
) -> tuple[Tensor, Tensor]:
    """RWKV-5 WKV: as ``wkv6`` but with one static log-decay per head and channel.

    Shapes:
        r, k: `[B, T, H, K]`; v: `[B, T, H, V]`; w: `[H, K]` (``-exp(time_decay)``, ``<= 0``);
        u: `[H, K]`; state: `[B, H, K, V]` fp32 (`[N, H, K, V]` with ``cu_seqlens``).
        Returns as ``wkv6``.

    The static decay is broadcast over batch and time as a view (no copy) and runs through
    the op and backends of ``wkv6``; autograd sums its gradient over batch and time.

    Reference: ``wkv6_reference``. Backends: those of ``wkv6``.
    """
    _validate(r, k, v, w, u, state, static_w=True, cu_seqlens=cu_seqlens, validate=validate)
    B, T, H, K = r.shape
    w_full = w.view(1, 1, H, K).expand(B, T, H, K)
    return _wkv(r, k, v, w_full, u, state, reverse, backend, cu_seqlens)
