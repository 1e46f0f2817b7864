"""RWKV language model: embedding, a stack of ``RWKVBlock``, ``ln_out`` and an unbiased head."""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
import torch.utils.checkpoint
from torch import Tensor, nn

from ._init import orthogonal_
from .ops import check_values
from .scan import ScanPlan
from .state import RWKVState, split_block_output, takes_context

__all__ = ["RWKVLanguageModel"]


def _takes(module: nn.Module, name: str) -> bool:
    """Whether ``module.forward`` declares a parameter ``name``."""
    try:
        return name in inspect.signature(module.forward).parameters
    except (TypeError, ValueError):  # builtins without a signature
        return False


def _run_block(block: nn.Module, x: Tensor, layer_state, i: int, scan: ScanPlan | None, kwargs: dict):
    if scan is None:
        return split_block_output(block(x, layer_state, **kwargs), f"block {i}")
    return scan.apply(block, x, layer_state, i, **kwargs)


class RWKVLanguageModel(nn.Module):
    """``logits = head(ln_out(blocks(ln0(x))))`` with ``x`` token embeddings or any embeddings.

    Accepting embeddings is what lets an image's features enter the sequence anywhere: build
    ``embeds`` with ``embed(tokens)`` and splice features in before calling the model.

    The stack is any sequence of blocks that follow the state protocol of ``rwkvblocks.state``: RWKV blocks,
    and between them a GRU, an attention layer or anything called as ``block(x, state) -> (y, state)`` (or a
    bare ``y``). Each block declares its state (``init_state``); blocks with a ``context`` parameter share one
    per-forward dict (RWKV-7's ``v_first``). The blocks are fixed at construction.

    Args:
        emb: Token embedding `[V, C]`.
        blocks: The blocks, block 0 first (an ``RWKVBlock`` 0 owns ``ln0``).
        ln_out: Final LayerNorm.
        head: Output projection `[V, C]`, no bias.

    Shapes:
        forward(tokens `[B, T]` int64, state ``RWKVState`` or ``None``; or ``embeds=`` `[B, T, C]`;
        optional ``scan=`` ``ScanPlan``) -> (logits `[B, T, V]` in the model dtype, new ``RWKVState``).
        A whole sequence at once (parallel) and token by token with the carried state
        (recurrent) give the same logits and states.

    Packing: ``cu_seqlens=`` `[N+1]` int32/int64 offsets (0, ..., T) of N samples packed into one row `[1, T]`
    (the WKV ops' convention). Every sample is computed exactly as if alone from the empty state: each
    block's token shifts read zeros at a sample's first position and the WKV restarts there. The returned
    state is then ``None`` (a row of several samples has no one state to continue), and ``state`` must be
    ``None``. Every block must take ``cu_seqlens`` (``RWKVBlock`` does, unless it has ``tiny_att``); any
    other block is refused. A scan plan works unchanged as long as no image span crosses a sample boundary
    (the plan permutes positions inside spans only).

    Activation checkpointing: with ``activation_checkpointing = True`` a training forward (module in training
    mode, gradients enabled) keeps only each block's input and recomputes the block in the backward
    (``torch.utils.checkpoint``, non-reentrant): the same gradients for about one more forward's compute,
    and activation memory of one block instead of all.

    Reference: BlinkDL RWKV-LM x052 / x060 / x070 (DESIGN.md §4, §15), checked against the ``rwkv`` package.
    Builders and checkpoint loading: ``assemblies.build_rwkv_lm``, ``assemblies.load_blinkdl``.
    """

    def __init__(
        self,
        emb: nn.Embedding,
        blocks: Sequence[nn.Module],
        ln_out: nn.LayerNorm,
        head: nn.Linear,
    ) -> None:
        super().__init__()
        if not blocks:
            raise ValueError("RWKVLanguageModel needs at least one block")
        self.emb = emb
        self.blocks = nn.ModuleList(blocks)
        self.ln_out = ln_out
        self.head = head
        self.vocab_size, self.dim = emb.weight.shape
        self._takes_context = tuple(takes_context(block) for block in self.blocks)
        self._takes_cu_seqlens = tuple(_takes(block, "cu_seqlens") for block in self.blocks)
        self.activation_checkpointing = False

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """BlinkDL's from-scratch init of the embedding (``U(±1e-4)``) and head (orthogonal)."""
        if not self.emb.weight.is_meta:
            self.emb.weight.uniform_(-1e-4, 1e-4)
        orthogonal_(self.head.weight, 0.5)

    @torch.no_grad()
    def use_decode_layout_(self) -> RWKVLanguageModel:
        """Re-store every ``nn.Linear`` weight as the transpose of a contiguous `[in, out]` matrix.

        Values, shapes, ``state_dict`` keys and gradients are unchanged; only the memory layout
        moves. Decoding one token reads every weight once, and on the CPU the matrix-vector
        product streams `[in, out]` storage about twice as fast as `[out, in]` (``benchmarks/lm.py``
        shows the effect on whole-model decoding). Prefill speed is unaffected. Returns ``self``.
        """
        for module in self.modules():
            if isinstance(module, nn.Linear) and module.weight.is_contiguous() and not module.weight.is_meta:
                weight = module.weight
                module.weight = nn.Parameter(weight.t().contiguous().t(), requires_grad=weight.requires_grad)
        return self

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> RWKVState:
        """The state before the first token, built from every block's ``init_state`` (on the model's device)."""
        device = device or self.emb.weight.device
        return RWKVState(
            tuple(
                block.init_state(batch_size, device) if hasattr(block, "init_state") else None for block in self.blocks
            )
        )

    def embed(self, tokens: Tensor, *, validate: bool | None = None) -> Tensor:
        """Token embeddings `[B, T, C]` (before ``ln0``, which block 0 applies).

        ``validate`` checks that every id is in ``[0, V)``; by default only for CPU tokens (elsewhere the
        check would read the device; pass ``validate=True`` to pay for it).
        """
        if tokens.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"tokens must be int64 (or int32) token ids, got dtype {tokens.dtype}")
        if tokens.numel() and check_values(tokens, validate):
            lo, hi = int(tokens.min()), int(tokens.max())
            if lo < 0 or hi >= self.vocab_size:
                raise ValueError(f"token ids must be in [0, {self.vocab_size}), got values in [{lo}, {hi}]")
        return self.emb(tokens)

    def features(
        self,
        tokens: Tensor | None = None,
        state: RWKVState | None = None,
        *,
        embeds: Tensor | None = None,
        scan: ScanPlan | None = None,
        cu_seqlens: Tensor | None = None,
    ) -> tuple[Tensor, RWKVState | None]:
        """The hidden states after ``ln_out`` `[B, T, C]` (what the head reads) and the new state.

        ``scan`` (from ``ScanPermuter.plan``) makes block ``i`` read each image's patch span in the
        schedule's direction for layer ``i``; the residual stream stays in raster order between blocks.
        ``cu_seqlens`` packs samples into one row (see the class docstring); the state returned is then ``None``.
        """
        if (tokens is None) == (embeds is None):
            raise ValueError("pass exactly one of tokens [B, T] or embeds [B, T, C]")
        if tokens is not None:
            if tokens.dim() != 2:
                raise ValueError(f"tokens must have shape [B, T], got {tuple(tokens.shape)}")
            x = self.embed(tokens)
        else:
            x = embeds
            if x.dim() != 3 or x.shape[-1] != self.dim:
                raise ValueError(f"embeds must have shape [B, T, {self.dim}], got {tuple(x.shape)}")
            if x.dtype != self.emb.weight.dtype:
                raise ValueError(f"embeds must have the model dtype {self.emb.weight.dtype}, got {x.dtype}")
        B, T = x.shape[:2]
        if T == 0:
            raise ValueError("the sequence is empty (T = 0)")
        if state is not None:
            self._check_state(state, B)
        if cu_seqlens is not None:
            cu_seqlens = self._check_packing(cu_seqlens, state, B, x.device)
        layers = state.layers if state is not None else (None,) * len(self.blocks)
        context: dict = {}  # values one block hands to later ones during this forward (RWKV-7: v_first)
        new_layers = []
        recompute = self.activation_checkpointing and self.training and torch.is_grad_enabled()
        for i, (block, layer_state) in enumerate(zip(self.blocks, layers)):
            kwargs = {"context": context} if self._takes_context[i] else {}
            if cu_seqlens is not None:
                kwargs["cu_seqlens"] = cu_seqlens
            if recompute:
                x, layer_state = torch.utils.checkpoint.checkpoint(
                    _run_block, block, x, layer_state, i, scan, kwargs, use_reentrant=False
                )
            else:
                x, layer_state = _run_block(block, x, layer_state, i, scan, kwargs)
            new_layers.append(layer_state)
        return self.ln_out(x), None if cu_seqlens is not None else RWKVState(tuple(new_layers))

    def forward(
        self,
        tokens: Tensor | None = None,
        state: RWKVState | None = None,
        *,
        embeds: Tensor | None = None,
        scan: ScanPlan | None = None,
        logits_to_keep: int | None = None,
        cu_seqlens: Tensor | None = None,
    ) -> tuple[Tensor, RWKVState | None]:
        """Logits and the new state; ``logits_to_keep=n`` computes only the last ``n`` positions.

        Prefilling a prompt needs only the last position's logits (``logits_to_keep=1``), which
        skips ``T - 1`` head projections — the head is the largest matrix in small models.
        ``cu_seqlens`` `[N+1]`: N samples packed into the row `[1, T]`, each computed as if alone; the
        logits are per position `[1, T, V]` and the state returned is ``None`` (see the class docstring).
        """
        hidden, state = self.features(tokens, state, embeds=embeds, scan=scan, cu_seqlens=cu_seqlens)
        if logits_to_keep is not None:
            if logits_to_keep < 1:
                raise ValueError(f"logits_to_keep must be >= 1 or None, got {logits_to_keep}")
            hidden = hidden[:, -logits_to_keep:]
        return self.head(hidden), state

    def _check_packing(self, cu_seqlens: Tensor, state: RWKVState | None, batch_size: int, device) -> Tensor:
        """Structure only (the WKV ops check the values where that reads no device); on ``device``."""
        if not isinstance(cu_seqlens, Tensor) or cu_seqlens.dtype not in (torch.int32, torch.int64):
            raise ValueError("cu_seqlens must be an int32 or int64 tensor [N+1] of sample offsets")
        if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
            raise ValueError(f"cu_seqlens must be 1-D [N+1] with N >= 1, got shape {tuple(cu_seqlens.shape)}")
        if batch_size != 1:
            raise ValueError(f"with cu_seqlens the samples are packed into one row and B must be 1, got B={batch_size}")
        if state is not None:
            raise ValueError("packed samples (cu_seqlens) each start from the empty state: pass state=None")
        refused = [i for i, ok in enumerate(self._takes_cu_seqlens) if not ok]
        if refused:
            names = ", ".join(f"{i} ({type(self.blocks[i]).__name__})" for i in refused)
            raise ValueError(
                f"packed samples (cu_seqlens) need every block to take cu_seqlens; block(s) {names} do not, "
                "and would mix the samples"
            )
        return cu_seqlens.to(device)

    def _check_state(self, state: RWKVState, batch_size: int) -> None:
        """Structure and shapes only: nothing here reads a tensor's values."""
        if not isinstance(state, RWKVState):
            raise ValueError(f"state must be an RWKVState, got {type(state).__name__}")
        if state.num_layers != len(self.blocks):
            raise ValueError(f"state has {state.num_layers} layers, the model {len(self.blocks)}")
        if state.batch_size != batch_size:
            raise ValueError(f"state has batch size {state.batch_size}, the input {batch_size}")
        for block, layer in zip(self.blocks, state.layers):
            if layer is not None and hasattr(block, "check_state"):
                block.check_state(layer, batch_size)
