"""The one grammar of choice labels: ``[cell/]node<-input`` for a cell edge, ``cell/node`` for a
node, and any other string for a choice that is not an edge (an OFA kernel size, an SPOS block).

Every module that needs the parts of a label asks here, so the grammar is written once.
"""
from __future__ import annotations

ARROW = "<-"
DEFAULT_CELL = "cell"  # the cell type of a label without a cell prefix (NB201's "1<-0")


def edge_label(node: str | int, source: int) -> str:
    """``edge_label("normal/3", 1)`` -> ``"normal/3<-1"``; ``edge_label(2, 0)`` -> ``"2<-0"``."""
    return f"{node}{ARROW}{int(source)}"


def is_edge(label: str) -> bool:
    return ARROW in label


def split_edge(label: str) -> tuple[str, int]:
    """``"normal/3<-1"`` -> ``("normal/3", 1)``: the node an edge feeds and the input it reads.

    Raises:
        ValueError: if ``label`` is not ``node<-input`` with an integer input.
    """
    node, arrow, source = label.rpartition(ARROW)
    if not arrow or not node or not source.isdigit():
        raise ValueError(f"edge label {label!r} is not 'node<-input' such as '3<-1' or 'normal/3<-1'")
    return node, int(source)


def node_of(label: str) -> str:
    """The node an edge feeds (``"normal/3<-1"`` -> ``"normal/3"``, ``"3<-1"`` -> ``"3"``)."""
    return split_edge(label)[0]


def node_index(node: str) -> int:
    """``"normal/3"`` -> 3, ``"3"`` -> 3."""
    return int(node.rpartition("/")[2])


def cell_of(label: str) -> str:
    """``"normal/3<-1"`` or ``"normal/3"`` -> ``"normal"``; no cell prefix -> ``"cell"``."""
    return label.rsplit("/", 1)[0] if "/" in label else DEFAULT_CELL
