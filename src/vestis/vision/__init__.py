"""Pixels -> feature maps: preprocessing, the trunk, and the on-disk feature cache (decoding itself is
`vestis.images`, one floor down, shared with the catalogue).

Modules (import them directly; this package imports nothing heavy):
  preprocess  letterbox to the trunk resolution, normalisation, box mapping image <-> input <-> feature map
  trunk       TrunkSpec (name, weights, resolution, levels -> cache key; to_json / from_json for runs),
              build_trunk -> Trunk: a tuple of maps, one per level of the spec (s8, s16, s32), logits
  cache       FeatureCache (float16 maps per image content hash, sharded, atomic) -> FeatureSet
  extract     extract_catalog: batched, resumable extraction with ONNX Runtime / PyTorch backends;
              encode_images (uploads), catalogue_features (extract what is missing, then load)
"""
