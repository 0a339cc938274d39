"""SemiSupSeg engine: semi-supervised 3D segmentation with two networks (no Slicer imports here)."""

__version__ = "0.2.0"
