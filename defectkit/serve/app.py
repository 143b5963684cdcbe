"""The inspector service: one bundle behind HTTP. POST /inspect takes one or many images
(multipart field `files`), GET /health and /model describe it, GET / is the operator page.

Uploads are checked before any inference: size, that the bytes are an image, its
dimensions, and that it decodes completely; each failure is a 4xx that names the file and
says what to do. Inference runs on a bounded pool of worker threads; requests beyond what
the pool and its queue hold get 503 rather than piling up."""

import asyncio
import base64
import io
import logging
import os
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, File, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image, UnidentifiedImageError

from defectkit.inspect import Inspector

log = logging.getLogger(__name__)

MAX_PIXELS = 40_000_000  # a 6000 x 6000 line-scan frame passes, a decompression bomb does not
MAX_FILES = 32
OVERLAY_SIDE = 768


class UploadError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def decode_upload(name: str, data: bytes, max_bytes: int, max_pixels: int) -> Image.Image:
    """Bytes of one upload -> a fully decoded RGB image, or an UploadError saying why not."""
    if not data:
        raise UploadError(400, f"{name}: the file is empty")
    if len(data) > max_bytes:
        raise UploadError(
            413, f"{name}: {len(data) / 2**20:.1f} MB is over the {max_bytes / 2**20:.0f} MB limit"
        )
    try:
        with warnings.catch_warnings():  # the size is judged below, against our own limit
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise UploadError(
            415, f"{name}: not an image this service reads (PNG, JPEG, BMP, TIFF, WebP)"
        ) from None
    except Image.DecompressionBombError as error:
        raise UploadError(413, f"{name}: {error}; send a smaller image or tile it") from None
    width, height = image.size
    if width * height > max_pixels:
        raise UploadError(
            413,
            f"{name}: {width} x {height} pixels is over the limit of {max_pixels:,}; "
            "send a smaller image or tile it",
        )
    try:
        image.load()
        return image.convert("RGB")
    except (OSError, SyntaxError, ValueError) as error:
        raise UploadError(
            400, f"{name}: the image is truncated or corrupt ({error}); send the file again"
        ) from None


def overlay_data_url(image: Image.Image, prediction) -> str | None:
    if prediction.heat_map is None:
        return None
    from defectkit.report import overlay

    buffer = io.BytesIO()
    overlay(image, prediction.heat_map, OVERLAY_SIDE).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def page_html() -> str:
    return resources.files("defectkit.serve").joinpath("index.html").read_text()


def create_app(
    bundle: str | Path,
    backend: str = "torch",
    workers: int = 2,
    queue: int = 64,
    max_upload_mb: float = 20.0,
    max_pixels: int = MAX_PIXELS,
    max_files: int = MAX_FILES,
) -> FastAPI:
    threads = max(1, (os.cpu_count() or 1) // max(1, workers))
    inspector = Inspector(bundle, backend=backend, threads=threads)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="inspect")
    slots = threading.BoundedSemaphore(workers + queue)
    max_bytes = int(max_upload_mb * 2**20)
    counters = {"inspected": 0, "rejected": 0, "started": time.time()}
    app = FastAPI(
        title="defectkit inspector",
        version=str(inspector.meta.get("versions", {}).get("defectkit", "")),
        description=f"OK/NG inspection with a {inspector.task} model ({inspector.backend}).",
    )

    @app.exception_handler(UploadError)
    async def upload_error(_: Request, error: UploadError) -> JSONResponse:
        counters["rejected"] += 1
        return JSONResponse({"detail": error.message}, status_code=error.status)

    @app.exception_handler(RequestValidationError)
    async def bad_request(_: Request, error: RequestValidationError) -> JSONResponse:
        counters["rejected"] += 1
        fields = sorted({".".join(map(str, e.get("loc", ()))) for e in error.errors()})
        return JSONResponse(
            {
                "detail": "send multipart/form-data with one or more image files in the field "
                f"`files` (problem with: {', '.join(fields) or 'the request body'})",
                "errors": [{"loc": e.get("loc"), "msg": e.get("msg")} for e in error.errors()],
            },
            status_code=422,
        )

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> str:
        return page_html()

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "task": inspector.task,
            "backend": inspector.backend,
            "uptime_s": round(time.time() - counters["started"], 1),
            "inspected": counters["inspected"],
            "rejected": counters["rejected"],
        }

    @app.get("/model")
    async def model() -> dict[str, Any]:
        return {**inspector.describe(), "workers": workers, "max_upload_mb": max_upload_mb}

    @app.post("/inspect")
    async def inspect(
        request: Request,
        files: list[UploadFile] = File(..., description="one or more images"),  # noqa: B008
        references: list[UploadFile] | None = File(  # noqa: B008
            None, description="models with a reference: the aligned reference of each image"
        ),
        overlay: bool = Query(False, description="return heat-map overlays as PNG data URLs"),
    ) -> dict[str, Any]:
        length = int(request.headers.get("content-length") or 0)
        if length > max_bytes * max(1, len(files)) + 2**20:
            raise UploadError(413, f"request of {length / 2**20:.1f} MB is over the limit")
        if len(files) > max_files:
            raise UploadError(413, f"{len(files)} files in one request; send at most {max_files}")
        images, names = [], []
        for index, upload in enumerate(files):
            name = upload.filename or f"file {index + 1}"
            data = await upload.read(max_bytes + 1)
            images.append(decode_upload(name, data, max_bytes, max_pixels))
            names.append(name)
        refs = None
        if inspector.meta.get("reference"):
            if not references or len(references) != len(files):
                raise UploadError(
                    422,
                    "this model compares each image with its aligned defect-free reference: "
                    "send one `references` file per `files` file, in the same order",
                )
            refs = []
            for index, upload in enumerate(references):
                name = upload.filename or f"reference {index + 1}"
                data = await upload.read(max_bytes + 1)
                refs.append(decode_upload(name, data, max_bytes, max_pixels))
        if not slots.acquire(blocking=False):
            raise UploadError(503, "the inspector is busy: retry in a moment")
        try:
            tick = time.perf_counter()
            loop = asyncio.get_running_loop()
            predictions = await loop.run_in_executor(
                pool, inspector.predict_images, images, names, refs
            )
            elapsed = (time.perf_counter() - tick) * 1000
        finally:
            slots.release()
        counters["inspected"] += len(predictions)
        results = []
        for image, prediction in zip(images, predictions, strict=True):
            row = prediction.to_dict()
            row["width"], row["height"] = image.size
            if overlay:
                row["overlay"] = overlay_data_url(image, prediction)
            results.append(row)
        return {"results": results, "ms": round(elapsed, 1), "task": inspector.task}

    app.state.inspector = inspector
    return app


def serve(bundle: str | Path, host: str = "127.0.0.1", port: int = 8000, **options) -> None:
    import uvicorn

    app = create_app(bundle, **options)
    print(f"defectkit inspector on http://{host}:{port}/ (API docs at /docs)")
    uvicorn.run(app, host=host, port=port, log_level="warning")
