"""One catalogue entry: an image, its labels, and optionally where things are in it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

# (x0, y0, x1, y1) in pixels of the original image, x1/y1 exclusive.
Box = tuple[float, float, float, float]


def parse_box(value) -> Box | None:
    """Accept "x0,y0,x1,y1", "x0 y0 x1 y1", a list, or empty; reject anything malformed."""
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, str):
        parts = value.replace(",", " ").split()
    else:
        parts = list(value)
    if len(parts) != 4:
        raise ValueError(f"a box needs 4 numbers x0,y0,x1,y1, got {value!r}")
    x0, y0, x1, y1 = (float(p) for p in parts)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"empty box {value!r}: need x0 < x1 and y0 < y1")
    return (x0, y0, x1, y1)


@dataclass(frozen=True)
class Part:
    """A labelled region of an image: one garment of an outfit, with its own attributes."""

    name: str
    box: Box
    attributes: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"name": self.name, "box": list(self.box), "attributes": dict(self.attributes)}

    @classmethod
    def from_json(cls, d: dict) -> "Part":
        box = parse_box(d.get("box"))
        if box is None:
            raise ValueError(f"part {d.get('name')!r} has no box")
        return cls(name=str(d["name"]), box=box, attributes={str(k): str(v) for k, v in d.get("attributes", {}).items()})


@dataclass(frozen=True)
class Item:
    """A catalogue item.

    `attributes` holds only known values: an attribute absent from the dict is "unspecified".
    `split` is set only when the source dataset ships its own partition; otherwise the catalogue
    assigns one from the id (see `splits.py`).
    `regions` maps an attribute to the box of the image region that carries it (ground truth for
    localisation, e.g. synthetic sleeves); `parts` are the garments of an outfit image.
    """

    id: str
    image: Path | None
    attributes: dict[str, str] = field(default_factory=dict)
    instance_id: str | None = None
    box: Box | None = None
    parts: tuple[Part, ...] = ()
    regions: dict[str, Box] = field(default_factory=dict)
    split: str | None = None

    def get(self, attribute: str) -> str | None:
        return self.attributes.get(attribute)
