"""Procedural synthetic fashion catalogue: labelled garment images with exact ground truth.

Pipeline, one direction: `garments` (labels and silhouettes in body units) -> `patterns` (fabric) ->
`scene` (figure, shading, background, camera and lighting nuisance, boxes) -> `generate` (planning,
parallel rendering, writing the catalogue) -> `contact_sheet` (a labelled grid to check by eye).

What the catalogue holds:

* Attributes (schema order fixed in `garments.ATTRIBUTES`): category (10), colour (14), pattern (6),
  sleeve, neckline, length, fit. An attribute that does not apply to a category (a sleeve on trousers,
  a length on a shirt) is absent from the item's labels, i.e. "unspecified".
* Single-garment images (about 90 %): `attributes` are the garment's labels, `box` its visible
  bounding box and `regions` a box per labelled attribute: sleeve (the picture-left sleeve with its
  armhole; for sleeveless garments the armhole and upper arm), neckline (the neck opening with its
  collar / hood / lapels / tube), length (the hem); category, colour, pattern and fit take the
  garment box. Garments are shown on a simple figure or flat, as product shots.
* Outfit images (about 10 %): a figure wearing a top over a bottom. The item has no attributes of its
  own; its `parts` are `top` and `bottom`, each with its visible box and full labels, and its `box`
  covers both.
* Views: each garment or outfit (`instance_id` "g000045") appears in 1-4 images ("s000123", file
  images/s000123.jpg) that differ in nuisance only: figure or flat, pose, framing, camera
  rotation / scale / perspective, background, lighting, noise and JPEG quality.
* All boxes are (x0, y0, x1, y1) in output pixels, computed after every geometric jitter.
"""

from vestis.catalog.synthetic.contact_sheet import make_contact_sheet
from vestis.catalog.synthetic.garments import ATTRIBUTES
from vestis.catalog.synthetic.generate import DEFAULT_SIZE, generate

__all__ = ["generate", "make_contact_sheet", "ATTRIBUTES", "DEFAULT_SIZE"]
