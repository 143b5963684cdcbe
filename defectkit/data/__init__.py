"""Datasets on disk -> Samples -> splits -> tensors."""
