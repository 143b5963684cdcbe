"""The inspector service: one bundle behind HTTP. POST /inspect takes one or many images
(multipart field `files`), GET /health and /model describe it, GET / is the operator page.

Uploads are checked before any inference: size, that the bytes are an image, its
dimensions, and that it decodes completely. A request of one file that fails gets a 4xx
that names the file and says what to do; in a request of several, every good file is
inspected and each bad one gets its own result with status "error", the HTTP code it would
have had and the reason (HTTP 207 when some failed, the first failure's 4xx when all did).
Inference runs on a bounded pool of worker threads; requests beyond what the pool and its
queue hold get 503 rather than piling up."""

import asyncio
import base64
import io
import logging
import os
import re
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, File, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image, UnidentifiedImageError

from defectkit.data.images import MAX_PIXELS, oversized
from defectkit.runtime.inspector import Inspector

log = logging.getLogger(__name__)

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
    except Image.DecompressionBombError as error:  # PIL's own limit, far above ours
        found = re.search(r"\((\d+) pixels\)", str(error))
        raise UploadError(
            413, oversized(name, int(found.group(1)) if found else 0, None, max_pixels)
        ) from None
    width, height = image.size
    if width * height > max_pixels:
        raise UploadError(413, oversized(name, width, height, max_pixels))
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


def _favicon() -> bytes:
    """A 32 px icon for browser tabs: a green and a red square (OK / NG)."""
    icon = Image.new("RGB", (32, 32), (29, 35, 41))
    icon.paste((27, 135, 63), (4, 8, 15, 24))
    icon.paste((198, 40, 40), (17, 8, 28, 24))
    buffer = io.BytesIO()
    icon.save(buffer, format="ICO", sizes=[(32, 32)])
    return buffer.getvalue()


FAVICON = _favicon()


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

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> Response:
        return Response(FAVICON, media_type="image/x-icon")

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
        paired = bool(inspector.meta.get("reference"))
        if paired and (not references or len(references) != len(files)):
            raise UploadError(
                422,
                "this model compares each image with its aligned defect-free reference: "
                "send one `references` file per `files` file, in the same order",
            )
        # every file decoded; a bad one (or its bad reference) becomes its own error result
        names, decoded, failures = [], [], {}
        for index, upload in enumerate(files):
            name = upload.filename or f"file {index + 1}"
            names.append(name)
            try:
                image = decode_upload(name, await upload.read(max_bytes + 1), max_bytes, max_pixels)
                reference = None
                if paired:
                    ref = references[index]
                    ref_name = ref.filename or f"reference {index + 1}"
                    data = await ref.read(max_bytes + 1)
                    reference = decode_upload(ref_name, data, max_bytes, max_pixels)
                decoded.append((index, image, reference))
            except UploadError as error:
                failures[index] = error
        if len(files) == 1 and failures:
            raise failures[0]
        predictions, elapsed = [], 0.0
        if decoded:
            if not slots.acquire(blocking=False):
                raise UploadError(503, "the inspector is busy: retry in a moment")
            try:
                tick = time.perf_counter()
                predictions = await asyncio.get_running_loop().run_in_executor(
                    pool,
                    inspector.predict_images,
                    [image for _, image, _ in decoded],
                    [names[i] for i, _, _ in decoded],
                    [ref for _, _, ref in decoded] if paired else None,
                )
                elapsed = (time.perf_counter() - tick) * 1000
            finally:
                slots.release()
        counters["inspected"] += len(predictions)
        counters["rejected"] += len(failures)
        results: list[dict[str, Any]] = [{} for _ in files]
        for (index, image, _), prediction in zip(decoded, predictions, strict=True):
            row = {"status": "ok", **prediction.to_dict()}
            row["width"], row["height"] = image.size
            if overlay:
                row["overlay"] = overlay_data_url(image, prediction)
            results[index] = row
        for index, error in failures.items():
            detail = error.message.removeprefix(f"{names[index]}: ")
            results[index] = {
                "status": "error",
                "image": names[index],
                "code": error.status,
                "detail": detail,
            }
        payload = {"results": results, "ms": round(elapsed, 1), "task": inspector.task}
        if failures:
            first = failures[min(failures)]
            status = 207 if predictions else first.status
            return JSONResponse(
                {**payload, "detail": f"{len(failures)} of {len(files)} file(s) not inspected"},
                status_code=status,
            )
        return payload

    app.state.inspector = inspector
    return app


def serve(bundle: str | Path, host: str = "127.0.0.1", port: int = 8000, **options) -> None:
    import uvicorn

    app = create_app(bundle, **options)
    print(f"defectkit inspector on http://{host}:{port}/ (API docs at /docs)")
    uvicorn.run(app, host=host, port=port, log_level="warning")
