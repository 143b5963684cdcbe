"""defectkit: industrial visual inspection, from a folder of images to a trusted inspector."""

__version__ = "0.1.0"
