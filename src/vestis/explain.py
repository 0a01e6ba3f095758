"""`vestis explain`: where a trained run looks for each attribute, drawn over the photo.

For models with explanation maps (FashionSearchNet's attribute activation maps and boxes, attribute_baseline's
Grad-CAM), each image gets one PNG with a panel per region of its `Explanation` (heatmap, box), titled with the
predicted value and its confidence, or "unspecified" (and no box) where that is likelier.
The image is encoded by the run's own trunk (the same letterbox and resolution as training), so a photo
that was never catalogued can be explained.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from vestis.errors import VestisError
from vestis.models.explanation import Explanation
from vestis.paths import default_cache_dir
from vestis.runs import load_run
from vestis.vision.trunk import TrunkSpec


@dataclass
class Explained:
    image: Path
    png: Path
    explanation: Explanation  # the image's regions; boxes in cells (`explanation.box_in_input_pixels`)


def explain_images(run_dir: Path, images: Sequence[Path], out: Path, threshold: float | None = None,
                   cache_dir: Path | None = None) -> list[Explained]:
    """Explain each image with the run's model; write `<out>/<image stem>-explain.png` (or `out` itself when
    it ends in .png and there is one image). Raises VestisError for a model without explanations or an
    unreadable image, before anything is written."""
    from vestis.overlay import render_overlay
    from vestis.vision.extract import encode_images, make_backend

    if not images:
        raise VestisError("no images to explain")
    model, info = load_run(Path(run_dir))
    if not model.explains:
        raise VestisError(f"run {run_dir} ({model.name}) has no explanation maps; explanations come from runs of "
                          f"models that localise attributes, e.g. fashionsearchnet")
    spec = TrunkSpec.from_json(info.trunk)
    backend = make_backend(spec, Path(cache_dir or default_cache_dir())).backend
    maps = encode_images(backend, spec.resolution, [Path(p) for p in images])
    exp = model.explain(maps) if threshold is None else model.explain(maps, threshold=threshold)  # sets its own grad mode
    out = Path(out)
    single_png = out.suffix.lower() == ".png"
    if single_png and len(images) > 1:
        raise VestisError(f"--out {out} names one PNG but {len(images)} images were given; pass a folder")
    results = []
    for image, explanation in zip(images, exp):
        image = Path(image)
        png = out if single_png else out / f"{image.stem}-explain.png"
        png.parent.mkdir(parents=True, exist_ok=True)
        png.write_bytes(render_overlay(image, explanation, spec.resolution))
        results.append(Explained(image=image, png=png, explanation=explanation))
    return results
