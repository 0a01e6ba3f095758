"""Pixels -> feature maps: image loading, preprocessing, the trunk, and the on-disk feature cache.

Modules (import them directly; this package imports nothing heavy):
  images      load_rgb / ImageReadError: safe decoding
  preprocess  letterbox to the trunk resolution, normalisation, box mapping image <-> input <-> feature map
  trunk       TrunkSpec (name, weights, resolution -> cache key), build_trunk -> Trunk: (s16, s32) maps, logits
  cache       FeatureCache (float16 maps per image content hash, sharded, atomic) -> FeatureSet
  extract     extract_catalog: batched, resumable extraction with ONNX Runtime / PyTorch backends
"""
