"""A whole script's NDIF plan: every request it would send, built and measured, recorded instead of sent.

Inside :func:`recording`, a remote run (``remote=True`` or a host) sends nothing: the engine's request loops
(:func:`~superscopes_nn.engine.run.run_requests`, :func:`~superscopes_nn.engine.run.run_custom_requests`)
build their request list as for NDIF, measure it with :func:`~superscopes_nn.engine.plan.measure_requests` /
:func:`~superscopes_nn.engine.plan.measure_custom_requests` (the serialized bytes nnsight would POST, the
result bytes at most), add that :class:`~superscopes_nn.engine.plan.Plan` to the :class:`Recorder` and hand
back a stand-in result of the returned shapes (zeros; generated ids: the prompt then token 0 up to
``max_new_tokens``), so the caller carries on. A session opened outside those loops (a script's own
``model.trace(..., backend=session_backend(...))``) gets a :class:`RecordingBackend`: its request is
serialized as :class:`~nnsight.intervention.backends.remote.RemoteBackend` serializes it, then its block runs
here under a fake-tensor mode on the meta weights (shapes only, as nnsight's ``scan``; in bfloat16 where an op's
meta kernel takes nothing else, an MoE's ``grouped_mm``) and every value it saves comes back as zeros of that
shape and dtype. ``superscopes plan --script`` (:mod:`superscopes_nn.output.plan_script`)
runs a registered script this way::

    with recording() as rec:
        experiments.run("superscopes_fig3", ["--model", "deepseek-ai/DeepSeek-V3", "--remote", "--out", tmp])
    print(rec.table())

What a later stage computes from results (auto-alpha, a population of wrong answers, a fitted map) is
computed from the stand-ins: the counts of such a stage are what the stand-ins give, which the caller says.
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch
from nnsight.intervention.backends.remote import RemoteBackend

from ..structure.info import model_info, model_name
from .plan import LIMITS, MiB, Plan, RequestPlan, saved_bytes

__all__ = ["Recorder", "RecordingBackend", "active", "recording", "stand_in", "stand_in_outs"]

_ACTIVE: ContextVar = ContextVar("superscopes_recording", default=None)


@dataclass
class Recorder:
    """The plans recorded, one per run call (a sweep, a ``collect``, a session of its own), in order."""

    plans: list = field(default_factory=list)

    def add(self, plan: Plan) -> None:
        self.plans.append(plan)

    @property
    def requests(self) -> list:
        return [r for p in self.plans for r in p.requests]

    def problems(self) -> list[str]:
        return [line for p in self.plans for line in p.problems()]

    def line(self, name: str) -> str:
        reqs = self.requests
        if not reqs:
            return f"plan: {name}: no NDIF request"
        sent, res = [r.sent for r in reqs], [r.result for r in reqs]
        ok = "within NDIF's limits" if not self.problems() else f"{len(self.problems())} over a limit"
        return (f"plan: {name}: {len(reqs)} NDIF request{'s' if len(reqs) != 1 else ''} in {len(self.plans)} "
                f"run{'s' if len(self.plans) != 1 else ''}, {sum(r.rows for r in reqs)} rows; sent "
                f"{_mib(max(sent))} max ({_mib(sum(sent))} total), results {_mib(max(res))} max "
                f"({_mib(sum(res))} total); {ok} (result <= {_mib(LIMITS['result'].value)}, request <= "
                f"{_mib(LIMITS['request'].value)})")

    def table(self, name: str) -> str:
        """:meth:`line`, then one line per request (the run it belongs to), then each broken limit."""
        lines = [self.line(name), "request  run  rows  chunks  sent_bytes  result_bytes"]
        n = 0
        for k, p in enumerate(self.plans, 1):
            for r in p.requests:
                n += 1
                lines.append(f"{n:7d}  {k:3d}  {r.rows:4d}  {r.chunks:6d}  {r.sent:10d}  {r.result:12d}")
        return "\n".join(lines + self.problems())


def _mib(n: int) -> str:
    return f"{n / MiB:.2f} MiB" if n >= 0.01 * MiB else f"{n / 1024:.1f} KiB"


def active() -> Recorder | None:
    """The :class:`Recorder` of the :func:`recording` in force, else None (requests are sent)."""
    return _ACTIVE.get()


@contextlib.contextmanager
def recording():
    """Record every NDIF request of the block instead of sending it (see the module doc); yields the Recorder."""
    rec = Recorder()
    token = _ACTIVE.set(rec)
    try:
        yield rec
    finally:
        _ACTIVE.reset(token)


def stand_in(returns):
    """``returns`` (meta / fake tensors in lists, tuples, dicts) as zero tensors of the same shapes and dtypes."""
    if isinstance(returns, torch.Tensor):
        return torch.zeros(tuple(returns.shape), dtype=returns.dtype)
    if isinstance(returns, dict):
        return {k: stand_in(v) for k, v in returns.items()}
    if isinstance(returns, (list, tuple)):
        return type(returns)(stand_in(v) for v in returns)
    return returns


def stand_in_outs(target_model, chunk):
    """What :func:`~superscopes_nn.engine.chunks.run_chunks` returns for ``chunk``, as stand-ins: None
    (read-only), logits ``[B, vocab]`` zeros, or ``(ids, finite, mapped_ok)``: the prompt then token 0 for
    every new token (the longest result), every row finite."""
    from .plan import vocab_size

    if chunk.target_ids is None:
        return None
    b, _ = chunk.target_ids.shape
    if chunk.logits:
        return torch.zeros(b, vocab_size(target_model), dtype=torch.float32)
    new = torch.zeros(b, int(chunk.gen_kwargs.get("max_new_tokens", 0)), dtype=torch.long)
    ok = torch.ones(b, dtype=torch.bool)
    return torch.cat([chunk.target_ids.long(), new], dim=1), ok, ok.clone()


class RecordingBackend(RemoteBackend):
    """The backend of a session opened outside the engine's request loops while :func:`recording`: its
    request serialized as for NDIF (measured), its block run here on fake tensors, its saves pushed as zeros."""

    def __init__(self, model, recorder: Recorder):
        super().__init__("recorded:model", host="http://127.0.0.1:9")  # the key is not in the serialized body
        self.model, self.recorder = model, recorder

    def __call__(self, tracer=None):
        from nnsight.tracing.util import push
        from torch._subclasses.fake_tensor import FakeTensor

        sent = len(self._serialize(tracer))
        frame = tracer.info.frame
        before = {k: id(v) for k, v in frame.f_locals.items()}
        module = self.model._module
        dtype = module.dtype
        try:
            _fake_run(tracer)
        except RuntimeError:  # an op whose meta kernel takes half precision only (an MoE's grouped_mm)
            module.to(torch.bfloat16)  # meta weights: only the dtype changes; what NDIF serves these in
            try:
                _fake_run(tracer)
            finally:
                module.to(dtype)
        saved = {k: v for k, v in frame.f_locals.items()
                 if before.get(k) != id(v) and _has(v, FakeTensor)}
        shapes = {k: _meta(v) for k, v in saved.items()}
        push(frame, stand_in(shapes))
        self.recorder.add(Plan(model=model_name(self.model), rows=1, chunk_count=1,
                               requests=(RequestPlan(rows=1, chunks=1, sent=sent, result=saved_bytes(shapes)),),
                               chunks_per_request=1, max_batch_size=1,
                               knob=f"fewer saved values per session of {model_name(self.model)} "
                                    f"(d={model_info(self.model).hidden})"))


def _fake_run(tracer) -> None:
    """The session's block run here on fake tensors (shapes and dtypes only, as nnsight's ``scan``)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    with FakeTensorMode(allow_non_fake_inputs=True, shape_env=ShapeEnv(assume_static_by_default=True)):
        tracer.execute(tracer.info.code)


def _has(value, kind) -> bool:
    if isinstance(value, kind):
        return True
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ()
    return any(_has(v, kind) for v in items)


def _meta(value):
    if isinstance(value, torch.Tensor):
        return torch.empty(tuple(value.shape), dtype=value.dtype, device="meta")
    if isinstance(value, dict):
        return {k: _meta(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_meta(v) for v in value)
    return value
