"""One resolver for every way a user names an architecture: a published name (``DARTS_V2``),
a canonical string, a JSON object, an ``arch.json`` path, or a benchmark index."""
from __future__ import annotations

import json
import re

from supernets.base import Arch, SearchSpace, read_arch_text
from supernets.registry import get, names


def published_names() -> dict[str, str]:
    """Published architecture name -> its space (``DARTS_V2`` -> ``darts``)."""
    return {name: space for space in names() for name in getattr(get(space), "genotypes", {})}


def infer_space(text: str) -> str:
    """The space of an arch string, JSON (its ``space`` key) or file, from its form."""
    body = read_arch_text(text)
    if body.startswith("{"):
        data = json.loads(body)
        if "space" in data:
            return str(data["space"])
        raise ValueError(f"arch JSON {text[:60]!r} has no 'space' key; pass the space explicitly")
    if body.startswith("Genotype("):
        return "darts"
    if "|" in body:
        return "nb201"
    if re.fullmatch(r"[\s(\[]*\d+(\s*,\s*\d+)*[\s)\]]*(;[\s\d,]*)?", body):
        return "spos-channels" if ";" in body else "spos"
    if re.fullmatch(r"r\d+-d\d+-k[\d.]+-e[\d.]+", body):
        return "ofa-mbv3"
    if re.fullmatch(r"\d+(\s+\d+)*", body):  # ENAS --child_fixed_arc tokens
        count = len(body.split())
        return "enas-micro" if count == 40 else "enas-macro"
    raise ValueError(f"cannot tell the space of arch {text[:60]!r}: expected 'Genotype(...)' (darts), "
                     f"'|op~0|+...' (nb201), '2,1,0,...' (spos; 'blocks;channels' spos-channels), "
                     f"'0 2 0 0 ...' (enas-micro: 40 tokens; enas-macro: L(L+1)/2), 'r224-d44444-k...-e...' (ofa-mbv3), "
                     f"JSON with a 'space' key, an arch.json path, or a "
                     f"published genotype name; or pass the space (one of {', '.join(names())})")


def resolve_arch(source: str | None = None, space: str | SearchSpace | None = None,
                 index: int | None = None) -> tuple[SearchSpace, Arch]:
    """The space and Arch named by ``source`` (a published name, a canonical string, JSON or an
    ``arch.json`` path) or by a benchmark ``index`` of ``space``.

    Without ``space``, it is read from the JSON's ``"space"``, from the published names, or from
    the string's form (``Genotype(...)`` is DARTS, ``|op~0|+...`` is NAS-Bench-201, comma-separated
    choices are SPOS).
    """
    chosen = get(space) if isinstance(space, str) else space
    if index is not None:
        if chosen is None or not hasattr(chosen, "from_index"):
            raise ValueError(f"space {getattr(chosen, 'name', None)!r} has no benchmark index; use an arch")
        return chosen, chosen.from_index(index)
    text = (source or "").strip()
    if not text:
        raise ValueError("arch is empty; pass a canonical string, JSON, an arch.json path or a "
                         "published genotype name such as DARTS_V2")
    published = published_names()
    if text in published:
        if chosen is not None and chosen.name != published[text]:
            raise ValueError(f"genotype {text!r} belongs to space {published[text]!r}, not {chosen.name!r}")
        owner = get(published[text])
        return owner, owner.genotypes[text]  # type: ignore[attr-defined]
    if chosen is None:
        chosen = get(infer_space(text))
    return chosen, chosen.load(text)
