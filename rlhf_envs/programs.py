"""Compiled tensor programs, and the counted labeler query that runs inside one.

:func:`compile_program` traces a pure function of tensors with ``make_fx`` and compiles it with
torch's CPU compiler (``torch._inductor``: fused C++ loops; it needs a C++ compiler). Its sums
are fused and reordered, so its numbers agree with the eager function's to rounding error, not
bit for bit: only opt-in paths use it.

:class:`LabelerProgram` is the oracle's query for such a program: a function that labels
responses (the labeler's noiseless verdict, as ``query_labeler`` gives it) somewhere inside,
compiled whole, that charges every call the value queries its labelling makes. The count is
taken when the program is traced (a traced program has no data-dependent control flow, so it
labels the same responses at every call).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch


def compile_program(fn: Callable, example: list[torch.Tensor]) -> Callable:
    """``fn(*tensors) -> tuple of tensors`` traced on ``example`` and compiled; the result takes
    tensors of the same shapes, strides and dtypes. Raises RuntimeError if compilation fails
    (e.g. no C++ compiler on this machine)."""
    from torch._inductor import compile as inductor_compile
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.proxy_tensor import make_fx
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    try:
        # traced on fake tensors of a mode with a (static) shape environment, which lets
        # inductor keep the compiled program in its on-disk cache for the next process
        mode = FakeTensorMode(shape_env=ShapeEnv())
        fakes = [mode.from_tensor(t, static_shapes=True) for t in example]
        with torch.no_grad(), mode:
            graph = make_fx(fn)(*fakes)
        return inductor_compile(graph, fakes)
    except Exception as e:
        raise RuntimeError(f"{type(e).__name__}: {e}") from e


def _signature(tensors) -> tuple:
    return tuple((t.shape, t.stride(), t.dtype) for t in tensors)


#: compiled labeler programs, by everything a trace fixes: ``key -> (program, charges)``
_PROGRAMS: dict[tuple, tuple[Callable, list[torch.Tensor]]] = {}


class LabelerProgram:
    """``build(label, *inputs)`` compiled whole, with ``label(y)`` the labeler's verdict on
    responses ``y`` of shape (S, ..., d) (:meth:`~rlhf_envs.core.RLHFCore.labeler_target`).

    Calling it with tensors like ``example`` charges one value query per labelled response to
    ``charged`` (the env's core, or an agent's slice of it) and returns ``build``'s first
    output. The labeler's tensors (:attr:`~rlhf_envs.core.RLHFCore.labeler_tensors`) are inputs
    of the compiled program, read from ``core`` at each call; the env's settings (its other
    numbers are constants of the trace), the shapes and ``key`` (what else ``build`` fixes: the
    caller's constants) select the compiled program, which is kept for the process: a new env
    with the same settings reuses it, other settings compile their own.
    """

    def __init__(self, core, charged, build: Callable, example: list[torch.Tensor], key: Any):
        self._core, self._charged = core, charged
        self._names = [n for n in core.labeler_tensors if torch.is_tensor(getattr(core, n, None))]
        full = (
            key,
            type(core),
            repr(core.config),  # the labeler's numbers besides its tensors
            repr(getattr(core, "env_config", None)),
            tuple(self._names),
            _signature(self._labeler_inputs()),
            _signature(example),
        )
        found = _PROGRAMS.get(full)
        if found is None:
            found = _PROGRAMS[full] = self._compile(build, example)
        self._run, self._charges = found

    def _labeler_inputs(self) -> list[torch.Tensor]:
        return [getattr(self._core, n) for n in self._names]

    def _compile(self, build: Callable, example: list[torch.Tensor]):
        core, k = self._core, len(self._names)

        def traced(*ts):
            given = dict(zip(self._names, ts[:k], strict=True))

            def label(y: torch.Tensor) -> torch.Tensor:
                shapes.append(tuple(y.shape))  # what a call will charge
                return core.labeler_target_with(given, y)

            out = build(label, *ts[k:])
            return tuple(out) if isinstance(out, (tuple, list)) else (out,)

        shapes: list[tuple[int, ...]] = []
        program = compile_program(traced, [*self._labeler_inputs(), *example])
        return program, [torch.empty(s, device="meta") for s in shapes]

    @property
    def queries_per_call(self) -> int:
        """Value queries each call charges per experiment."""
        return sum(math.prod(c.shape[1:-1]) if c.dim() > 2 else 1 for c in self._charges)

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        for c in self._charges:
            self._charged.charge(c)
        return self._run(*self._labeler_inputs(), *inputs)[0]
