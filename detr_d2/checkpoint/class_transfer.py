"""Class-head transfer by class name: a checkpoint's classifier rows -> a dataset's contiguous
classes.

``transfer_class_head`` rebuilds ``class_embed`` (weight (S+1, d), bias (S+1); last row = no-object)
of a detr_d2 state dict for a target dataset with K classes (contiguous ids 0..K-1), giving
``class_embed`` (K+1, d) / (K+1) for ``MODEL.DETR.NUM_CLASSES K`` and ``CLASS_SLOTS contiguous``:

* row ``c`` of the target is the source row of the class with the same name
  (:func:`.class_names.class_match_key`: case, separators and the COCO panoptic
  ``-merged``/``-other``/``-stuff`` suffixes do not matter), or the one a class-map file names;
* rows with no match ("new") are those of a freshly constructed ``nn.Linear(d, K + 1)`` -- PyTorch's
  default initialisation, which is what ``DetrPanoptic`` gives ``class_embed`` (weight
  ``kaiming_uniform_(a=sqrt(5))``, i.e. U(-1/sqrt(d), 1/sqrt(d)), bias U(-1/sqrt(d), 1/sqrt(d))) --
  created under ``torch.manual_seed(seed)`` inside a forked RNG (:func:`fresh_class_head`), so
  the result is reproducible and the caller's random state is untouched;
* the no-object row is the source's last row.

Nothing is guessed: a target name matching two source rows, two targets taking the same source row
(unless a class map says so), and a class map naming an unknown class are errors.
Class-map file (JSON or YAML): ``{target class name: source class name, or null for a fresh row}``;
its entries override the name matching (names compared by
:func:`.class_names.normalize_class_name`).
"""

from __future__ import annotations

import json
import logging
import os
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .class_names import class_match_key, dataset_class_names, normalize_class_name
from .layout import format_list

__all__ = [
    "ClassMatch",
    "format_transfer_table",
    "fresh_class_head",
    "load_class_map",
    "match_classes",
    "transfer_class_head",
]

logger = logging.getLogger(__name__)

ClassMap = Mapping[str, Optional[str]]


@dataclass(frozen=True)
class ClassMatch:
    """Where target class ``contiguous_id`` gets its classifier row: ``source_row`` of the
    checkpoint (class ``source_name``), or a fresh row (``source_row`` None). ``rule``: ``"name"``,
    ``"class map"``, ``"new"`` (no source class of that name) or ``"new (class map)"``."""

    target_name: str
    contiguous_id: int
    source_name: Optional[str]
    source_row: Optional[int]
    rule: str


def load_class_map(path: str) -> Dict[str, Optional[str]]:
    """Read a class-map file: a JSON (``.json``) or YAML object ``{target name: source name or
    null}``."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"class map file not found: {path}")
    with open(path, "r", encoding="utf-8") as f:
        text = f.read()
    try:
        if path.lower().endswith(".json"):
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as e:
        raise ValueError(
            f"{path}: cannot be parsed as "
            f"{'JSON' if path.lower().endswith('.json') else 'YAML'}: {e}"
        ) from e
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and (v is None or isinstance(v, str)) for k, v in data.items()
    ):
        raise ValueError(
            f"{path}: expected an object {{target class name: source class name or null}}, "
            f"got {data!r:.200}"
        )
    return dict(data)


def _index(names: Sequence[Optional[str]], key) -> Dict[str, List[int]]:
    out: Dict[str, List[int]] = defaultdict(list)
    for i, n in enumerate(names):
        if n is not None:
            out[key(n)].append(i)
    return out


def match_classes(
    source_classes: Sequence[Optional[str]],
    target_classes: Sequence[str],
    class_map: Optional[ClassMap] = None,
    *,
    source: str = "checkpoint",
    class_map_source: str = "class map",
) -> List[ClassMatch]:
    """Decide, for each target class (by contiguous id), which source row it takes (see module doc).

    ``source_classes``: name per source class row (``None`` = unnamed row). Raises ``ValueError``
    listing every ambiguous name, every source row claimed by several targets and every unknown
    class-map name.
    """
    class_map = dict(class_map or {})
    by_key = _index(source_classes, class_match_key)
    by_name = _index(source_classes, normalize_class_name)
    targets_by_name = _index(list(target_classes), normalize_class_name)

    unknown_targets = [t for t in class_map if normalize_class_name(t) not in targets_by_name]
    unknown_sources = [
        s for s in class_map.values() if s is not None and normalize_class_name(s) not in by_name
    ]
    if unknown_targets or unknown_sources:
        parts = []
        if unknown_targets:
            parts.append(
                f"target classes {format_list(unknown_targets)} are not classes of the dataset "
                f"({format_list(list(target_classes))})"
            )
        if unknown_sources:
            parts.append(
                f"source classes {format_list(unknown_sources)} are not classes of {source}"
            )
        raise ValueError(f"{class_map_source}: " + "; ".join(parts))
    mapped = {normalize_class_name(t): s for t, s in class_map.items()}

    matches: List[ClassMatch] = []
    ambiguous: List[str] = []
    for cid, target in enumerate(target_classes):
        norm = normalize_class_name(target)
        if norm in mapped:
            wanted = mapped[norm]
            if wanted is None:
                matches.append(ClassMatch(target, cid, None, None, "new (class map)"))
                continue
            rows, rule = by_name[normalize_class_name(wanted)], "class map"
        else:
            rows, rule = by_key.get(class_match_key(target), []), "name"
        if len(rows) > 1:
            ambiguous.append(
                f"'{target}' matches {', '.join(f'{source_classes[r]!r} (row {r})' for r in rows)}"
            )
        elif rows:
            matches.append(ClassMatch(target, cid, source_classes[rows[0]], rows[0], rule))
        else:
            matches.append(ClassMatch(target, cid, None, None, "new"))
    claimed: Dict[int, List[ClassMatch]] = defaultdict(list)
    for m in matches:
        if m.source_row is not None:
            claimed[m.source_row].append(m)
    shared = [
        f"{source_classes[row]!r} (row {row}) <- {', '.join(repr(m.target_name) for m in ms)}"
        for row, ms in claimed.items()
        if len(ms) > 1 and any(m.rule == "name" for m in ms)
    ]
    if ambiguous or shared:
        problems = [f"ambiguous class names: {'; '.join(ambiguous)}"] if ambiguous else []
        if shared:
            problems.append(
                f"several target classes match the same source class: {'; '.join(shared)}"
            )
        raise ValueError(
            f"{source}: cannot transfer the class head by name: {' | '.join(problems)}. "
            "Say which source class each of these target classes takes (or null for a fresh "
            "row) in a class-map file"
        )
    return matches


def fresh_class_head(
    hidden_dim: int, num_logits: int, seed: int = 0
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Weight (num_logits, hidden_dim) and bias (num_logits,) of ``nn.Linear(hidden_dim,
    num_logits)`` constructed right after ``torch.manual_seed(seed)``; the global RNG state is
    restored afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layer = nn.Linear(hidden_dim, num_logits)
    return layer.weight.detach(), layer.bias.detach()


def format_transfer_table(matches: Sequence[ClassMatch]) -> str:
    """The transfer as a text table: target class, contiguous id, source class, source row or
    'new'."""
    rows = [("target class", "id", "source class", "source row")]
    for m in matches:
        source_row = "new" if m.source_row is None else str(m.source_row)
        if "class map" in m.rule:
            source_row += " (class map)"
        rows.append((m.target_name, str(m.contiguous_id), m.source_name or "-", source_row))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def transfer_class_head(
    state_dict: Mapping[str, torch.Tensor],
    source_classes: Sequence[Optional[str]],
    target: Union[Sequence[str], Any],
    *,
    class_map: Optional[ClassMap] = None,
    seed: int = 0,
    prefix: str = "class_embed",
    source: str = "checkpoint",
    class_map_source: str = "class map",
) -> Tuple[Dict[str, torch.Tensor], List[ClassMatch]]:
    """Re-target the classifier of a detr_d2 state dict to another class list (see the module
    docstring).

    Args:
        state_dict: detr_d2 names; ``{prefix}.weight`` (S+1, d) and ``{prefix}.bias`` (S+1) are
        replaced. source_classes: S names (``None`` for unnamed rows), e.g.
        :func:`.class_names.official_class_names`. target: class names by contiguous id, or a
            Detectron2 dataset name / ``Metadata`` (:func:`.class_names.dataset_class_names`).
        class_map: ``{target name: source name or None}`` overrides (:func:`load_class_map`).
        seed: seed of the fresh rows (:func:`fresh_class_head`).

    Returns the new state dict (other tensors shared, not copied) and the per-class matches, which
    are also logged as a table. Raises ``ValueError`` as :func:`match_classes`, or when
    ``source_classes`` does not have one name per class row.
    """
    targets = (
        [str(t) for t in target]
        if isinstance(target, (list, tuple))
        else dataset_class_names(target)
    )
    weight, bias = state_dict[f"{prefix}.weight"], state_dict[f"{prefix}.bias"]
    if len(source_classes) != weight.shape[0] - 1 or bias.shape[0] != weight.shape[0]:
        raise ValueError(
            f"{source}: {len(source_classes)} source class names for a classifier with "
            f"{weight.shape[0]} rows "
            f"(bias {bias.shape[0]}); expected one name per row before the no-object row"
        )
    matches = match_classes(
        source_classes, targets, class_map, source=source, class_map_source=class_map_source
    )
    new_weight, new_bias = fresh_class_head(weight.shape[1], len(targets) + 1, seed)
    new_weight, new_bias = new_weight.to(weight.dtype).clone(), new_bias.to(bias.dtype).clone()
    for m in matches:
        if m.source_row is not None:
            new_weight[m.contiguous_id] = weight[m.source_row]
            new_bias[m.contiguous_id] = bias[m.source_row]
    new_weight[-1], new_bias[-1] = weight[-1], bias[-1]
    copied = sum(m.source_row is not None for m in matches)
    logger.info(
        "%s: class head transferred to %d classes (%d rows copied, %d new, no-object row "
        "kept):\n%s",
        source,
        len(targets),
        copied,
        len(targets) - copied,
        format_transfer_table(matches),
    )
    out = dict(state_dict)
    out[f"{prefix}.weight"], out[f"{prefix}.bias"] = new_weight, new_bias
    return out, matches
