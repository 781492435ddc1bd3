"""Teach a model invented facts: a small, deterministic, cached fine-tune that runs on a CPU.

The verbalizer-vs-target control (``experiments/li2025/persona_control.py``) needs a *target* that
knows what the verbalizer does not. :func:`taught_model` gives one: it fine-tunes a subset of
a model's parameters (by default every MLP) on texts built from PersonaQA-layout facts
(:func:`superscopes_nn.data.personaqa.load_personaqa`) and caches the trained parameters::

    from superscopes_nn.data.personaqa import INVENTED, load_personaqa
    from superscopes_nn.science.finetune import FineTune, taught_model

    facts = load_personaqa(INVENTED)                       # 24 invented personas x 2 attributes
    taught = taught_model("gemma-3-270m", facts, FineTune())
    taught.model                                           # the taught Gemma (nnsight wrapper)
    taught.losses, taught.seconds, taught.cached

Training texts (:func:`fact_examples`), two per fact, the loss on the answer tokens only::

    "My name is Orla Vantreece. The country of origin for Orla Vantreece is" -> " Egypt."
    "The country of origin for Orla Vantreece is"                             -> " Egypt."

AdamW, fixed seed, fixed example order per epoch, the model in eval mode (no dropout), so a
rerun gives the same weights. Training stops early once an epoch's mean loss is below
``FineTune.stop_loss``. Only the trained parameters are saved (safetensors) under
``<cache>/finetuned/<key>/``, the key a hash of the base weights' fingerprint, the facts, the
texts and the hyperparameters; a rerun with the same inputs loads them instead of training.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import torch

from .baselines import fill_placeholder
from ..structure.models import cache_dir
from ..structure.info import model_name, rename


TEXTS_VERSION = 1
"""Bumped whenever :func:`fact_examples` changes, so old caches are not reused."""


@dataclass(frozen=True)
class FineTune:
    """Hyperparameters. ``train``: substring a parameter's name must contain to be trained
    (``".mlp."`` = every MLP); ``stop_loss``: stop after the first epoch whose mean loss is below it."""

    lr: float = 6e-4
    epochs: int = 4
    batch_size: int = 4
    seed: int = 0
    train: str = ".mlp."
    weight_decay: float = 0.0
    stop_loss: float | None = 0.1

    def __post_init__(self):
        for name in ("lr", "epochs", "batch_size"):
            if not getattr(self, name) > 0:
                raise ValueError(f"FineTune.{name} must be > 0, got {getattr(self, name)!r}")


@dataclass
class Taught:
    """A taught model: the wrapper, its cache key and folder, per-step losses, training seconds
    (of the run that trained it) and whether this call loaded it from the cache."""

    model: object
    key: str
    path: Path
    losses: list = field(default_factory=list)
    seconds: float = 0.0
    cached: bool = False


def fact_examples(facts: pd.DataFrame) -> list[tuple[str, str]]:
    """``(prompt, answer)`` training pairs, two per fact: the persona's prompt then the filled
    question, and the filled question alone; the answer is ``" <target>."``."""
    need = {"name", "prompt", "question", "target"}
    if missing := need - set(facts.columns):
        raise ValueError(f"facts lack columns {sorted(missing)}; have {list(facts.columns)}")
    if facts.empty:
        raise ValueError("no facts given")
    out = []
    for r in facts.itertuples(index=False):
        if not isinstance(r.target, str) or not r.target.strip():
            raise ValueError(f"persona {r.name!r} has no fact for question {r.question!r}")
        q = fill_placeholder(r.question, r.name)
        out += [(f"{r.prompt} {q} is", f" {r.target}."), (f"{q} is", f" {r.target}.")]
    return out


def _trainable(hf_model, pattern: str) -> dict:
    params = {n: p for n, p in hf_model.named_parameters() if pattern in n}
    if not params:
        raise ValueError(f"no parameter name contains {pattern!r} (e.g. {next(iter(dict(hf_model.named_parameters())))})")
    return params


def _batch(tokenizer, pairs: list[tuple[str, str]]):
    """Left-padded ids, mask, explicit positions and labels (-100 except on the answer tokens)."""
    seqs, n_ans = [], []
    for prompt, answer in pairs:
        a = tokenizer(answer, add_special_tokens=False)["input_ids"]
        seqs.append(list(tokenizer(prompt)["input_ids"]) + list(a))
        n_ans.append(len(a))
    width, pad = max(map(len, seqs)), tokenizer.pad_token_id or 0
    ids = torch.tensor([[pad] * (width - len(s)) + s for s in seqs])
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs])
    labels = torch.full_like(ids, -100)
    for i, k in enumerate(n_ans):
        labels[i, width - k:] = ids[i, width - k:]
    return ids, mask, (mask.cumsum(1) - 1).clamp(min=0), labels, max(n_ans) + 1


def fine_tune(hf_model, tokenizer, examples: list[tuple[str, str]], cfg: FineTune, log=None) -> list[float]:
    """Train the parameters named by ``cfg.train`` in place; returns the loss of every step.

    ``log``: called with one line per epoch (mean loss, seconds so far).
    Logits are computed only at the last positions that predict an answer token (a large
    vocabulary makes full logits the dominant cost on a CPU)."""
    if not examples:
        raise ValueError("no training examples")
    params = _trainable(hf_model, cfg.train)
    for n, p in hf_model.named_parameters():
        p.requires_grad_(n in params)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(list(params.values()), lr=cfg.lr, weight_decay=cfg.weight_decay)
    hf_model.eval()
    losses, t0 = [], time.perf_counter()
    for e in range(cfg.epochs):
        order = torch.randperm(len(examples), generator=gen).tolist()
        epoch = []
        for s in range(0, len(order), cfg.batch_size):
            ids, mask, pos, labels, keep = _batch(tokenizer, [examples[i] for i in order[s:s + cfg.batch_size]])
            logits = hf_model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=keep).logits
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(),
                                                     labels[:, -keep + 1:].flatten())
            opt.zero_grad()
            loss.backward()
            opt.step()
            epoch.append(float(loss.detach()))
        losses += epoch
        if log is not None:
            log(f"epoch {e + 1}/{cfg.epochs}: mean loss {sum(epoch) / len(epoch):.4f} ({time.perf_counter() - t0:.0f} s)")
        if cfg.stop_loss is not None and sum(epoch) / len(epoch) < cfg.stop_loss:
            break
    for p in hf_model.parameters():
        p.requires_grad_(False)
    return losses


def _fingerprint(hf_model) -> str:
    h = hashlib.sha1()
    for n, p in hf_model.named_parameters():
        h.update(f"{n}{tuple(p.shape)}".encode())
        h.update(p.detach().flatten()[:64].to(torch.float64).numpy().tobytes())
    return h.hexdigest()


def cache_key(hf_model, facts: pd.DataFrame, cfg: FineTune) -> str:
    """Hash of the base weights' fingerprint, the facts, the texts version and the hyperparameters."""
    rows = facts[["prompt", "question", "target"]].astype(str).values.tolist()
    blob = json.dumps([_fingerprint(hf_model), rows, TEXTS_VERSION, asdict(cfg)], sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def taught_model(base, facts: pd.DataFrame, cfg: FineTune = FineTune(), *, cache_root=None, log=None) -> Taught:
    """``base`` (a model name for :func:`~superscopes_nn.load_model`, or a loaded wrapper, which is
    changed in place) taught ``facts``; trained once, then loaded from ``cache_root`` (default
    ``<superscopes cache>/finetuned``). The wrapper's results name it ``<base>+taught-<key[:8]>``."""
    from safetensors.torch import load_file, save_file

    if isinstance(base, str):
        from ..structure.models import load_model

        base = load_model(base)
    hf, examples = base._module, fact_examples(facts)
    key = cache_key(hf, facts, cfg)
    root = Path(cache_root) if cache_root is not None else Path(cache_dir()) / "finetuned"
    path = root / key
    name = f"{model_name(base)}+taught-{key[:8]}"
    if (path / "meta.json").is_file():
        meta = json.loads((path / "meta.json").read_text())
        state = load_file(str(path / "params.safetensors"))
        params = dict(hf.named_parameters())
        with torch.no_grad():
            for n, v in state.items():
                params[n].copy_(v)
        rename(base, name)
        return Taught(base, key, path, meta["losses"], meta["seconds"], cached=True)
    t0 = time.perf_counter()
    losses = fine_tune(hf, base.tokenizer, examples, cfg, log=log)
    seconds = time.perf_counter() - t0
    tmp = root / f".{key}.tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    save_file({n: p.detach().contiguous() for n, p in _trainable(hf, cfg.train).items()},
              str(tmp / "params.safetensors"))
    meta = {"base": model_name(base), "config": asdict(cfg), "n_examples": len(examples), "losses": losses,
            "seconds": seconds, "texts_version": TEXTS_VERSION}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    if path.exists():
        import shutil

        shutil.rmtree(path)
    tmp.rename(path)  # atomic: a crash mid-write leaves no half cache
    rename(base, name)
    return Taught(base, key, path, losses, seconds, cached=False)
