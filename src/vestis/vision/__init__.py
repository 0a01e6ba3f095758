"""Pixels -> feature maps: image loading, preprocessing, the trunk, and the on-disk feature cache."""
