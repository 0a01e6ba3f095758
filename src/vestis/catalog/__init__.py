"""Catalogue layer: items, attribute schema, splits, readers and the synthetic catalogue."""

from vestis.catalog.catalog import Catalog, LoadReport
from vestis.catalog.item import Box, Item, Part
from vestis.catalog.schema import UNSPECIFIED, AttributeSchema
from vestis.catalog.splits import SPLITS, assign_split

__all__ = ["Catalog", "LoadReport", "Item", "Part", "Box", "AttributeSchema", "UNSPECIFIED", "SPLITS", "assign_split"]
