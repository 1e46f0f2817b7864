"""Backend dispatch shared by every op.

Each backend has a name, a cheap cached availability probe, ``unsupported_reasons(inputs)``
and ``run``. Selection order: an explicit ``backend=`` argument, then the op's environment
variable, then the first registered backend that reports no reasons (``auto_reasons`` included).
An explicitly requested backend (argument or variable) that cannot run the input raises with its
reasons; it is never silently swapped for another.

Every op is one ``torch.library`` custom op whose real kernel, fake kernel and autograd context each
ask the dispatcher which backend runs the call (``Dispatcher.resolve``): selection reads only
metadata (shapes, dtypes, devices, flags), so all three agree, and under ``torch.compile`` the choice
is made while tracing without ever looking at a value.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Backend", "BackendUnavailableError", "Dispatcher"]

logger = logging.getLogger("rwkvblocks.ops")


class BackendUnavailableError(ValueError):
    """A requested backend cannot run the given input; the message lists every reason."""


@dataclass(frozen=True)
class Backend:
    """One implementation of an op.

    Attributes:
        name: Short name used by ``backend=`` and the environment variable.
        run: The implementation, called with the op's arguments.
        unsupported_reasons: Returns why this backend cannot run an input (empty: it can).
        probe: Returns why the backend is unavailable on this machine at all, or ``None``.
            Called once and cached.
        description: One line for ``python -m rwkvblocks.info``.
        auto_reasons: Why automatic selection should pass over an input this backend can run
            (it still runs it when requested by name), e.g. a Triton kernel on CPU tensors
            under the interpreter.
        backward: The backend's gradient, called by the op's registered backward with the forward's
            inputs, what ``run`` saved and the output cotangents (arguments are op-specific);
            ``None`` for a forward-only backend.
        residual: Shape and dtype of the tensor that ``run`` saves for ``backward``, from the inputs'
            metadata alone (the op's fake kernel allocates it); ``None``: it saves an empty tensor.
    """

    name: str
    run: Callable[..., Any]
    unsupported_reasons: Callable[[Any], list[str]] = field(default=lambda inputs: [])
    probe: Callable[[], str | None] = field(default=lambda: None)
    description: str = ""
    auto_reasons: Callable[[Any], list[str]] = field(default=lambda inputs: [])
    backward: Callable[..., Any] | None = None
    residual: Callable[[Any], tuple[tuple[int, ...], Any]] | None = None

    def availability(self) -> str | None:
        """Why this backend is unavailable here (cached), or ``None`` when it is available."""
        return _cached_probe(self.probe)

    def reasons(self, inputs: Any) -> list[str]:
        """Every reason this backend cannot run ``inputs`` (empty when it can)."""
        missing = self.availability()
        if missing is not None:
            return [missing]
        return list(self.unsupported_reasons(inputs))


@functools.cache
def _cached_probe(probe: Callable[[], str | None]) -> str | None:
    try:
        return probe()
    except Exception as exc:  # a probe that crashes means "unavailable", with the reason
        return f"probe failed: {type(exc).__name__}: {exc}"


class Dispatcher:
    """Ordered backends of one op and the rule that picks one for an input.

    Args:
        op: Name of the op, for messages.
        env_var: Environment variable that may name a backend.
        backends: Backends in order of preference; the last should always accept.
        prefer: Optional heuristic: given the inputs, names of backends to try before the
            registration order (e.g. a step-by-step kernel for one-token decoding).
        context: Optional: whatever else the backends' reasons depend on (e.g. whether Triton runs
            under its interpreter), as a hashable value; part of the key ``resolve`` remembers by.
    """

    _RESOLVED_MAX = 1024  # distinct input metadata remembered; cleared when full

    def __init__(
        self,
        op: str,
        env_var: str,
        backends: Sequence[Backend] = (),
        prefer: Callable[[Any], Sequence[str]] | None = None,
        context: Callable[[], Hashable] | None = None,
    ):
        self.op = op
        self.env_var = env_var
        self.prefer = prefer
        self.context = context
        self._backends: list[Backend] = list(backends)
        self._logged: set[tuple[str, str]] = set()
        self._resolved: dict[Hashable, Backend] = {}

    @property
    def backends(self) -> tuple[Backend, ...]:
        return tuple(self._backends)

    def register(self, backend: Backend, *, before: str | None = None) -> None:
        """Add ``backend``, at the end or just before the backend named ``before``."""
        if any(b.name == backend.name for b in self._backends):
            raise ValueError(f"{self.op}: a backend named {backend.name!r} is already registered")
        self._resolved.clear()
        if before is None:
            self._backends.append(backend)
            return
        self._backends.insert(self.names().index(self.get(before).name), backend)

    def names(self) -> list[str]:
        return [b.name for b in self._backends]

    def get(self, name: str) -> Backend:
        for b in self._backends:
            if b.name == name:
                return b
        raise ValueError(f"{self.op}: unknown backend {name!r}; known backends: {', '.join(self.names())}")

    def select(self, inputs: Any, backend: str | None = None, *, device_key: str = "") -> Backend:
        """The backend that runs ``inputs``.

        Raises:
            BackendUnavailableError: the requested backend cannot run the input, or (which
                should not happen while a reference backend is registered) none can.
            ValueError: the requested name is unknown.
        """
        requested, source = backend, "backend="
        if requested is None and os.environ.get(self.env_var):
            requested, source = os.environ[self.env_var], f"${self.env_var}"
        if requested is not None:
            chosen = self.get(requested)
            reasons = chosen.reasons(inputs)
            if reasons:
                raise BackendUnavailableError(
                    f"{self.op}: backend {chosen.name!r} (from {source}) cannot run this input: " + "; ".join(reasons)
                )
            return chosen
        all_reasons = []
        first = [n for n in (self.prefer(inputs) if self.prefer else ()) if n in self.names()]
        ordered = [self.get(n) for n in first] + [b for b in self._backends if b.name not in first]
        for b in ordered:
            reasons = b.reasons(inputs) or list(b.auto_reasons(inputs))
            if not reasons:
                key = (b.name, device_key)
                if key not in self._logged:
                    self._logged.add(key)
                    logger.info("%s: using backend %r (%s)", self.op, b.name, device_key or "auto")
                return b
            all_reasons.append(f"{b.name}: " + "; ".join(reasons))
        raise BackendUnavailableError(f"{self.op}: no backend can run this input: " + " | ".join(all_reasons))

    def resolve(self, inputs: Any, backend: str | None = None, *, device_key: str = "") -> Backend:
        """``select``, remembered per inputs, requested name, environment variable and ``context``.

        The op's real kernel, its fake kernel and its autograd context each call this for one call of
        the op: the same metadata always gets the same backend, and repeated calls skip the reasons.
        Inputs that do not hash (symbolic shapes under ``torch.compile(dynamic=True)``) are selected
        afresh each time, the comparisons on their sizes becoming guards of the compiled graph.

        Raises:
            BackendUnavailableError, ValueError: as ``select``.
        """
        key = (inputs, backend, os.environ.get(self.env_var) or None, self.context() if self.context else None)
        try:
            chosen = self._resolved.get(key)
        except TypeError:  # a SymInt among the sizes
            return self.select(inputs, backend, device_key=device_key)
        if chosen is None:
            chosen = self.select(inputs, backend, device_key=device_key)
            if len(self._resolved) >= self._RESOLVED_MAX:
                self._resolved.clear()
            self._resolved[key] = chosen
        return chosen
