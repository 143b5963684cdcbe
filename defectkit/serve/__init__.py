"""The inspector service (app.py) and its operator page (index.html)."""

from defectkit.serve.app import UploadError, create_app, decode_upload, serve

__all__ = ["UploadError", "create_app", "decode_upload", "serve"]
