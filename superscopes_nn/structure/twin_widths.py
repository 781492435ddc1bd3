"""Which config integers make a model wide, read off its parameter shapes on the meta device.

:mod:`.twin` first shrinks the width keys it knows by name (the fast path). What is left wide
is found without names: the twin is built on the meta device (no allocation), the dimensions of
its largest parameters are read, and every config integer that *produces* one of them (equal to
it, or one factor of it next to another config integer) is shrunk. Counts that define structure
(layers, per-layer kinds, dense/MoE switches, positions, token ids: :data:`STRUCTURAL`) are
never touched. Identities the original config holds between its integers (``a == b * c``,
``a * b == c * e``, ``a == b + c``: a Mamba block's ``hidden * expand == heads * head_dim``, MLA's
``head_dim == nope + rope``, ``a == b``; within one sub-config, one per-layer override merged with
the config it overrides, then across sub-configs) are restored on the twin by re-solving a key, the
keys the class's refusal names first and the refusal after each change guiding the next, so the
config classes' own checks pass and no width is derived otherwise (:func:`derived`: no module
appears or goes). Top-k values are clamped to the twin's expert count, expert groups to 1.
"""

from __future__ import annotations

import copy
import re
from itertools import combinations, islice

import torch

__all__ = ["STRUCTURAL", "TOPK", "int_leaves", "set_leaf", "meta_params", "wide_keys", "new_widths", "repair",
           "derived", "tie_to_hidden", "clamp_topk"]

#: names of integers that decide structure or addressing, never shrunk by shape
STRUCTURAL = re.compile(r"layer|vocab|token|position|max_|window|seq|chunk|step|freq|bucket|period|interval|pad|bos|eos|"
                        r"_id$|_ids|theta|context|n_ctx|length|batch|label|replace|dense|sparse|every|seed|kernel|"
                        r"expert|top_?k|per_tok|group|version|_idx|index|sink", re.I)
#: names of per-token expert counts (clamped to the twin's expert count)
TOPK = re.compile(r"^(moe_)?top_?k$|per_tok|moe_k$|experts_per|num_selected", re.I)
EXPERT_COUNT = re.compile(r"(^|_)(num|n)_?(local_|routed_)?experts$|^moe_num_experts$|^num_experts$|expert_num$", re.I)
#: names of expert-group counts the name table does not know (Bailing's ``num_expert_group``, read as ``n_group``)
EXPERT_GROUPS = re.compile(r"^(?!.*top_?k).*(experts?_groups?|groups?_(of_)?experts?)", re.I)
#: names of head counts (a count, never one term of a sum of widths)
COUNT = re.compile(r"heads?$", re.I)
SMALL = 16
WIDTH_NAME = re.compile(r"(dim|size)$", re.I)
HIDDEN = ("hidden_size", "n_embd", "d_model")


def int_leaves(d: dict, path: tuple = ()) -> dict:
    """``{path: value}`` of every int (not bool) in ``d`` and its sub-dicts (lists of ints by their max)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(int_leaves(v, path + (k,)))
        elif isinstance(v, int) and not isinstance(v, bool):
            out[path + (k,)] = v
        elif isinstance(v, list) and v and all(isinstance(i, int) and not isinstance(i, bool) for i in v):
            out[path + (k,)] = max(v)
    return out


def set_leaf(d: dict, path: tuple, fn) -> None:
    """``d[path] = fn(d[path])`` in place (a list of ints element by element)."""
    for k in path[:-1]:
        d = d[k]
    v = d[path[-1]]
    d[path[-1]] = [fn(i) for i in v] if isinstance(v, list) else fn(v)


def meta_params(config):
    """``(total parameter count, [(name, shape)] largest first)`` of ``config``'s causal LM built on meta."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    shapes = sorted(((n, tuple(p.shape)) for n, p in model.named_parameters()), key=lambda kv: -_numel(kv[1]))
    return sum(_numel(s) for _, s in shapes), shapes


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def wide_keys(d: dict, shapes, fixed: set, limit: int, skip: tuple = ()) -> list:
    """Paths of the ints of ``d`` producing a dimension above ``limit`` of the largest parameters ``shapes``
    (equal to it, or a factor of it whose cofactor is another int of ``d``), leaving out ``fixed`` paths,
    structural names and values ``skip`` (the twin's vocabulary)."""
    leaves = int_leaves(d)
    values = set(leaves.values())
    dims = {s for _, shape in shapes[:64] for s in shape if s > limit and s not in skip}
    out = []
    for path, v in leaves.items():
        if path in fixed or v <= SMALL or STRUCTURAL.search(path[-1]):
            continue
        if v in dims or any(dim % v == 0 and dim // v in values for dim in dims):
            out.append(path)
    return out


def new_widths(paths, before: dict, after: dict, known: dict) -> dict:
    """``{path: twin value}`` for the widths ``paths`` found by shape, largest first: a value the name table
    shrank keeps its twin value (``known``: original -> twin); one that is a known width times or over
    another config int ``u`` (``v == K * u`` or ``K / u``) keeps that ratio (``K' * u'``, ``K' / u'``), so
    ``attention_hidden_size == 2 * hidden_size`` or ``head_dim == hidden_size / heads`` still hold; else the
    largest divisor of the value up to 16 (16 when that is below 4)."""
    known, out = dict(known), {}
    for path in sorted(paths, key=lambda p: -before[p]):
        v = before[path]
        new = known.get(v) or _ratio(path, before, after, known)
        if not new:
            best = max(i for i in range(1, SMALL + 1) if v % i == 0)
            new = best if best >= 4 else SMALL
        out[path] = known.setdefault(v, new)
    return out


def _ratio(path, before: dict, after: dict, known: dict) -> int:
    v = before[path]
    for big, small in known.items():  # the hidden size first
        for u, uo in before.items():
            un = after.get(u)
            if u == path or uo <= 1 or not isinstance(un, int) or un < 1 or STRUCTURAL.search(u[-1]):
                continue
            if big * uo == v and small * un <= v:
                return small * un
            if big == v * uo and small % un == 0 and small // un >= 1:
                return small // un
    return 0


def derived(orig: dict, built: dict) -> set:
    """Paths of the ints a config class derives on one of ``orig`` / ``built`` (a config's ``to_dict``) and not on
    the other: BLT sets ``global_config.encoder_cross_output_size`` (a projection) only when the encoder width
    times ``cross_attn_k`` differs from the global width."""
    a, b = _number_leaves(orig), _number_leaves(built)
    shared = {p[:-1] for p in a} & {p[:-1] for p in b}  # dicts on both (per-layer tables may be keyed anew)
    return {p for p in set(a) ^ set(b) if p[:-1] in shared} | {p for p in set(a) & set(b) if (a[p] is None) != (
        b[p] is None)}


def _number_leaves(d: dict, path: tuple = ()) -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_number_leaves(v, path + (k,)))
        elif v is None or (isinstance(v, int) and not isinstance(v, bool)):
            out[path + (k,)] = v
    return out


def _groups(leaves: dict, cross: bool) -> list:
    """Lists of paths identities are looked for in: each (sub-)config's own, one per entry of a table of
    overrides (Dots3's ``per_layer_config["02"]``) merged with the config it overrides, or (``cross``) all."""
    keep = {p: v for p, v in leaves.items() if v > 1 and not STRUCTURAL.search(p[-1])}
    if cross:
        return [list(keep)]
    groups: dict = {}
    for p in keep:
        groups.setdefault(p[:-1], []).append(p)
    for entry, keys in list(groups.items()):
        base = groups.get(entry[:-2]) if len(entry) >= 2 else None
        names = {p[-1] for p in keys}
        if base and names <= {p[-1] for p in base}:
            groups[("merged",) + entry] = keys + [p for p in base if p[-1] not in names]
    return list(groups.values())


def _identities(leaves: dict, cross: bool = False):
    """``(kind, paths)`` identities among the ints > 1 of one (sub-)config of the original (not structural), or of
    all its (sub-)configs together (``cross``): ``a == b * c`` and ``a == b + c`` (``"prod"``, ``"sum"``),
    ``a * b == c * e`` (``"prod2"``), ``a == b`` (``"eq"``, widths above :data:`SMALL`); head counts take no part
    in sums."""
    for keys in _groups(leaves, cross):
        by_value: dict = {}
        for p in keys:
            by_value.setdefault(leaves[p], []).append(p)
        by_product: dict = {}
        for same in by_value.values():  # a == b (Dots3's vision ``adapter_in_dim == hidden_size``)
            yield from (("eq", pair) for pair in combinations(same, 2) if leaves[pair[0]] > SMALL)
        for b, c in combinations(keys, 2):
            for a in by_value.get(leaves[b] * leaves[c], []):
                if a not in (b, c):
                    yield "prod", (a, b, c)
            for a in by_value.get(leaves[b] + leaves[c], []):  # widths add up, head counts do not
                if a not in (b, c) and not any(COUNT.search(p[-1]) for p in (a, b, c)):
                    yield "sum", (a, b, c)
            for c2, e2 in by_product.get(leaves[b] * leaves[c], []):
                if not {b, c} & {c2, e2}:
                    yield "prod2", (b, c, c2, e2)
            by_product.setdefault(leaves[b] * leaves[c], []).append((b, c))


def _holds(kind, vals) -> bool:
    if kind == "eq":
        return vals[0] == vals[1]
    if kind == "prod":
        return vals[0] == vals[1] * vals[2]
    if kind == "sum":
        return vals[0] == vals[1] + vals[2]
    return vals[0] * vals[1] == vals[2] * vals[3]


def _solve(kind, vals, i) -> int:
    """The value of term ``i`` making the identity hold (0 when no int does)."""
    if kind == "eq":
        return vals[1 - i]
    if kind == "sum":
        return vals[1] + vals[2] if i == 0 else vals[0] - vals[3 - i]
    if kind == "prod":
        num, den = (vals[1] * vals[2], 1) if i == 0 else (vals[0], vals[3 - i])
    else:  # a * b == c * e
        pair, mate = (vals[2] * vals[3], vals[1 - i]) if i < 2 else (vals[0] * vals[1], vals[5 - i])
        num, den = pair, mate
    return num // den if den and num % den == 0 else 0


def repair(orig: dict, d: dict, fixed: set, accepts, tries: int = 400, hint: str = ""):
    """A copy of ``d`` that ``accepts`` (the config class's own checks: its refusal, "" when it takes it) takes,
    or None: each identity of
    :func:`_identities` that ``orig`` holds and ``d`` breaks is restored by re-solving one of its keys (an int
    >= 1, no larger than the original; keys the name table did not set first, a top-level hidden size never),
    one change, then two; identities naming the most keys the class's refusal (``hint``, then the refusal of the
    first change) names, then holding the most table-set keys (``fixed``), are tried first, and first changes
    the class refuses for another reason (Dots3: its SWA widths mended, its vision adapter width not) are
    followed up first. Identities
    within a (sub-)config first, then across sub-configs (BLT's global width == encoder width x
    ``cross_attn_k``: widths re-solved before small multipliers)."""
    for cross in (False, True):
        out = _repair(orig, d, fixed, accepts, tries, cross, hint)
        if out is not None:
            return out
    return None


def _repair(orig: dict, d: dict, fixed: set, accepts, tries: int, cross: bool, hint: str):
    before = int_leaves(orig)
    ids = list(islice(_identities(before, cross), 20000))

    def ranked(message):  # identities naming the most keys the refusal names, then the most table-set keys
        named = set(re.findall(r"\w+", message))
        return sorted(ids, key=lambda kp: (-sum(p[-1] in named for p in kp[1]), -sum(p in fixed for p in kp[1])))[:2000]

    def order(path):
        return (before[path] <= SMALL, path not in fixed) if cross else (path in fixed,)

    def changes(cur, found):
        now = int_leaves(cur)
        for kind, paths in found:
            if any(p not in now for p in paths) or _holds(kind, [now[p] for p in paths]):
                continue
            vals = [now[p] for p in paths]
            for i in sorted(range(len(paths)), key=lambda i: order(paths[i])):
                new = _solve(kind, vals, i)
                top_hidden = paths[i][-1] in HIDDEN and (len(paths[i]) == 1 or not cross)
                if not top_hidden and 1 <= new <= before[paths[i]] and new != vals[i]:
                    yield paths[i], new

    index: dict = {}  # across sub-configs, what a re-solved width takes along with it
    for kind, paths in (list(_identities(before)) + list(_equalities(before))) if cross else ():
        for p in paths:
            index.setdefault(p, []).append((kind, paths))

    def changed(cur, path, new):
        out = copy.deepcopy(cur)
        set_leaf(out, path, lambda _v: new)
        return _propagate(index, before, cur, out, path) if cross else out

    budget, keys = [tries], {p[-1] for p in before}

    def search(cur, refused: str, depth: int):
        """One change to ``cur``; then, from changes the class refuses for another reason (past this check:
        Dots3's SWA widths, then its vision, then its audio adapter width), the next, ``depth`` deep."""
        firsts, seen = [], set()
        for path, new in islice(changes(cur, ranked(refused)), 4 * tries // 10):  # leave tries to follow up
            if (path, new) in seen:  # the same change found through another identity (each per-layer override's)
                continue
            seen.add((path, new))
            trial = changed(cur, path, new)
            budget[0] -= 1
            refusal = accepts(trial)
            if not refusal:
                return trial
            named = set(re.findall(r"\w+", refusal)) & keys
            past = refusal != refused and bool(named) and path[-1] not in named  # not a check this change broke
            firsts.append((not past, len(firsts), trial, refusal))
            if budget[0] <= 0:
                return None
        for stuck, _i, first, refusal in sorted(firsts, key=lambda f: f[:2])[:20 if depth > 1 else 0]:
            out = search(first, refusal, 1 if stuck else depth - 1)
            if out is not None or budget[0] <= 0:
                return out
        return None

    return search(d, hint, 4)


def _propagate(index: dict, before: dict, cur: dict, out: dict, path, depth: int = 3) -> dict:
    """``out`` (``cur`` with ``path`` re-solved, changed in place) with every identity of ``index`` (path -> the
    identities through it) through ``path`` that held on ``cur`` and breaks on ``out`` held again, by re-solving
    another of its keys (widths before small multipliers: BLT's global ``head_dim`` and the encoder's
    ``hidden_size_global`` follow its re-solved global hidden size), and so on, ``depth`` steps."""
    was, now = int_leaves(cur), int_leaves(out)
    done, queue = {path}, [(path, depth)]
    while queue:
        at, steps = queue.pop(0)
        for kind, paths in index.get(at, ()):
            if any(p not in now or p not in was for p in paths) or not _holds(kind, [was[p] for p in paths]):
                continue
            vals = [now[p] for p in paths]
            if _holds(kind, vals):
                continue
            for i in sorted((i for i in range(len(paths)) if paths[i] not in done),
                            key=lambda i: before[paths[i]] <= SMALL):
                new = _solve(kind, vals, i)
                if paths[i][-1] not in HIDDEN and 1 <= new <= before[paths[i]]:
                    set_leaf(out, paths[i], lambda _v, n=new: n)
                    now[paths[i]] = new
                    done.add(paths[i])
                    if steps > 1:
                        queue.append((paths[i], steps - 1))
                    break
    return out


def _equalities(leaves: dict):
    """``("eq", (a, b))`` for the widths (> :data:`SMALL`, not structural) equal on the original, across
    sub-configs (BLT's ``encoder_config.hidden_size_global == global_config.hidden_size``)."""
    by_value: dict = {}
    for p, v in leaves.items():
        if v > SMALL and not STRUCTURAL.search(p[-1]):
            by_value.setdefault(v, []).append(p)
    for paths in by_value.values():
        yield from (("eq", pair) for pair in combinations(paths, 2))


def tie_to_hidden(orig: dict, d: dict) -> None:
    """A width the name table left alone (a name ending in ``dim`` / ``size``) equal on ``orig`` to a hidden size
    the table shrank takes that hidden size's twin value (its own config's first), in place: Dots3's adapters
    (vision ``adapter_in_dim``, ``adapter_out_dim`` == the text hidden size), which their classes check."""
    before, now = int_leaves(orig), int_leaves(d)
    hidden = {p: now[p] for p in before if p[-1] in HIDDEN and p in now and now[p] != before[p]}
    for p, v in before.items():
        if p in hidden or now.get(p) != v or v <= SMALL or STRUCTURAL.search(p[-1]) or not WIDTH_NAME.search(p[-1]):
            continue
        match = [h for h in hidden if before[h] == v]
        if match:
            h = min(match, key=lambda h: (h[:-1] != p[:-1], len(h), h))
            set_leaf(d, p, lambda _v, n=hidden[h]: n)


def clamp_topk(d: dict, experts: int) -> None:
    """Every expert count of ``d`` (and its sub-dicts) at most ``experts``, every per-token expert count
    (top-k) at most the twin's fewest experts, every expert-group count 1 (as the name table's ``n_group``: a
    router viewing its experts as ``groups x experts / groups`` never reaches a zero width)."""
    for path, v in int_leaves(d).items():  # expert counts the name table does not know (LongCat's zero experts)
        if EXPERT_COUNT.search(path[-1]) and v > experts and not path[-1].startswith("n_shared"):
            set_leaf(d, path, lambda i: min(i, experts))
    for path, v in int_leaves(d).items():
        if EXPERT_GROUPS.search(path[-1]) and v > 1:
            set_leaf(d, path, lambda _i: 1)
    leaves = int_leaves(d)
    counts = [v for p, v in leaves.items() if EXPERT_COUNT.search(p[-1]) and v > 1]
    cap = min(counts + [experts])
    for path, v in leaves.items():
        if TOPK.search(path[-1]) and v > cap and not path[-1].endswith("group"):
            set_leaf(d, path, lambda i: min(i, cap))
