"""Landmark recognition on Google Landmarks Dataset v2 (GLDv2), stage by stage.

Conventions used across the package:

- Descriptors (embeddings) are float32 arrays of shape (N, D), one row per
  image, in the same order as the list of image ids stored beside them.
- Image ids are GLDv2's 16-character lowercase hex strings; landmark ids are
  non-negative integers.
- Every file a stage writes is written to a temporary name in the same folder
  and then renamed, so an interrupted run never leaves a partial file behind.
"""

__version__ = "0.1.0"
