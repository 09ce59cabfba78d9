"""segfuse: segmentation with auxiliary scans fused at native resolution."""

__version__ = "0.1.0"
