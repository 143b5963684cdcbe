"""The inspector service: one bundle behind HTTP. POST /inspect takes one or many images
(multipart field `files`), GET /health and /model describe it, GET / is the operator page.

Uploads are checked before any inference: size, that the bytes are an image, its
dimensions, and that it decodes completely. A request of one file that fails gets a 4xx
that names the file and says what to do; in a request of several, every good file is
inspected and each bad one gets its own result with status "error", the HTTP code it would
have had and the reason (HTTP 207 when some failed, the first failure's 4xx when all did).
Inference runs on a bounded pool of worker threads; requests beyond what the pool and its
queue hold get 503 rather than piling up.

Every inspected image gets an `id`; the service holds the latest images for a while so that
POST /feedback can store an operator's answer about one (runtime/feedback.py) with the image
and the model's own output. With a candidate bundle (shadow mode) both models inspect every
image, only the current one answers, and their disagreements go to the feedback store.
GET /metrics gives counters, latency and drift against the bundle's baseline in the
Prometheus text format; GET /monitor the same for the operator page (runtime/monitor.py)."""

import asyncio
import base64
import io
import logging
import os
import re
import sqlite3
import threading
import time
import uuid
import warnings
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import Body, FastAPI, File, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image, UnidentifiedImageError

from defectkit.data.images import MAX_PIXELS, oversized
from defectkit.overlay import overlay
from defectkit.runtime.feedback import FeedbackError, FeedbackStore, check_answer, overturns
from defectkit.runtime.inspector import Inspector
from defectkit.runtime.monitor import DriftMonitor, read_baseline

log = logging.getLogger(__name__)

MAX_FILES = 32
OVERLAY_SIDE = 768
HELD_IMAGES = 256  # inspected images kept for feedback, at most this many
HELD_BYTES = 256 * 2**20  # and at most this many bytes


class HeldImages:
    """The latest inspected images with the model's output, by id, for feedback."""

    def __init__(self, count: int = HELD_IMAGES, size: int = HELD_BYTES):
        self.count, self.size = count, size
        self._items: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def add(self, item: dict[str, Any]) -> str:
        key = uuid.uuid4().hex
        with self._lock:
            self._items[key] = item
            self._bytes += len(item["data"])
            while self._items and (len(self._items) > self.count or self._bytes > self.size):
                _, old = self._items.popitem(last=False)
                self._bytes -= len(old["data"])
        return key

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            return self._items.get(key)


def feedback_folder(bundle: str | Path) -> Path:
    """The default store: `feedback/` beside the bundle folder (in its run folder)."""
    folder = Path(bundle)
    if (folder / "bundle").is_dir():
        folder = folder / "bundle"
    return folder.resolve().parent / "feedback"


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
    feedback: str | Path | None = None,
    candidate: str | Path | None = None,
    drift_window: int = 500,
    drift_min_count: int = 30,
    psi_limit: float = 0.25,
) -> FastAPI:
    """feedback: the feedback store's folder (default: feedback/ beside the bundle);
    candidate: a second bundle run in shadow mode; drift_*: see runtime/monitor.py."""
    threads = max(1, (os.cpu_count() or 1) // max(1, workers))
    inspector = Inspector(bundle, backend=backend, threads=threads)
    shadow = Inspector(candidate, backend=backend, threads=threads) if candidate else None
    if shadow is not None and shadow.task != inspector.task:
        raise ValueError(
            f"the candidate is a {shadow.task} model, the current one {inspector.task}: "
            "shadow mode compares two models of the same task"
        )
    if shadow is not None and bool(shadow.meta.get("reference")) != bool(
        inspector.meta.get("reference")
    ):
        raise ValueError("the candidate and the current model must both take references, or not")
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="inspect")
    shadow_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shadow")
    shadow_slots = threading.BoundedSemaphore(queue)
    slots = threading.BoundedSemaphore(workers + queue)
    max_bytes = int(max_upload_mb * 2**20)
    counters = {"inspected": 0, "rejected": 0, "started": time.time(), "shadow_skipped": 0}
    store_folder = Path(feedback or feedback_folder(bundle))
    try:
        store = FeedbackStore(store_folder)
    except (OSError, sqlite3.Error) as error:
        raise ValueError(
            f"cannot keep the feedback store in {store_folder} ({error}): give a writable "
            "folder with --feedback DIR"
        ) from None
    held = HeldImages()
    monitor = DriftMonitor(
        read_baseline(Path(inspector.meta["folder"])),
        window=drift_window,
        min_count=drift_min_count,
        psi_limit=psi_limit,
    )
    model_id = str(inspector.meta.get("weights_sha256", ""))

    def inspect_and_watch(images, names, references):
        """Inference, then the monitor's statistics of each image, on an inference thread
        (never on the event loop: the image statistics of a large image take milliseconds)."""
        tick = time.perf_counter()
        predictions = inspector.predict_images(images, names, references)
        seconds = (time.perf_counter() - tick) / max(1, len(predictions))
        for prediction, image in zip(predictions, images, strict=True):
            monitor.observe(prediction, image, seconds)
        return predictions

    def run_shadow(images, references, items) -> None:
        """The candidate on the same images; each disagreement is stored."""
        try:
            calls = shadow.predict_images(images, [item["name"] for item in items], references)
            for item, call in zip(items, calls, strict=True):
                current = item["output"]
                agrees = current["ok"] == call.ok and current["label"] == call.label
                monitor.shadow.labels(str(agrees).lower()).inc()
                if not agrees:
                    store.add(
                        "shadow",
                        item["name"],
                        item["data"],
                        inspector.task,
                        model_id,
                        current,
                        candidate={
                            **call.to_dict(),
                            "model": shadow.meta.get("weights_sha256", ""),
                        },
                    )
        except Exception:  # the candidate never takes the service down
            log.exception("shadow model failed")
        finally:
            shadow_slots.release()

    app = FastAPI(
        title="defectkit inspector",
        version=str(inspector.meta.get("versions", {}).get("defectkit", "")),
        description=f"OK/NG inspection with a {inspector.task} model ({inspector.backend}).",
    )

    @app.exception_handler(UploadError)
    async def upload_error(_: Request, error: UploadError) -> JSONResponse:
        counters["rejected"] += 1
        monitor.observe_rejected()
        return JSONResponse({"detail": error.message}, status_code=error.status)

    @app.exception_handler(RequestValidationError)
    async def bad_request(_: Request, error: RequestValidationError) -> JSONResponse:
        counters["rejected"] += 1
        monitor.observe_rejected()
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
        return {
            **inspector.describe(),
            "workers": workers,
            "max_upload_mb": max_upload_mb,
            "candidate": None if shadow is None else shadow.describe(),
            "feedback": True,
        }

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(monitor.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/monitor")
    async def monitor_state() -> dict[str, Any]:
        """The recent images against the bundle's baseline: NG rate, latency, drift, warnings."""
        state = await asyncio.get_running_loop().run_in_executor(None, monitor.state)
        return {**state, "feedback_records": store.count()}

    @app.post("/feedback")
    async def feedback_answer(
        answer: dict[str, Any] = Body(  # noqa: B008
            ...,
            examples=[
                {"id": "…", "ok": False, "boxes": [{"x": 3, "y": 4, "width": 20, "height": 9}]}
            ],
        ),
    ) -> dict[str, Any]:
        """An operator's answer about an inspected image (its `id` from /inspect): classify
        {"label": CLASS}, other tasks {"ok": true|false} with optional "boxes" drawn on the
        image; "operator" and "note" optional. Stored with the image and the model's output."""
        item = held.get(str(answer.get("id", "")))
        if item is None:
            raise UploadError(
                404,
                "this image is no longer held by the service (it restarted, or many images "
                "were inspected since): inspect it again, then send the answer",
            )
        try:
            checked = check_answer(answer, inspector.task, inspector.classes, item["size"])
        except FeedbackError as error:
            raise UploadError(422, str(error)) from None
        record = {**item["output"], "image": item["name"]}
        stored = await asyncio.get_running_loop().run_in_executor(
            None,
            lambda: store.add(
                "feedback",
                item["name"],
                item["data"],
                inspector.task,
                model_id,
                record,
                answer=checked,
                operator=str(answer.get("operator", ""))[:200],
                note=str(answer.get("note", ""))[:2000],
            ),
        )
        changed = overturns(inspector.task, checked, record["label"], record["ok"])
        monitor.feedback.labels(str(changed).lower()).inc()
        return {"stored": stored, "overturned": changed, "answer": checked}

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
        names, decoded, failures, raw = [], [], {}, {}
        for index, upload in enumerate(files):
            name = upload.filename or f"file {index + 1}"
            names.append(name)
            try:
                raw[index] = await upload.read(max_bytes + 1)
                image = decode_upload(name, raw[index], max_bytes, max_pixels)
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
                    inspect_and_watch,
                    [image for _, image, _ in decoded],
                    [names[i] for i, _, _ in decoded],
                    [ref for _, _, ref in decoded] if paired else None,
                )
                elapsed = (time.perf_counter() - tick) * 1000
            finally:
                slots.release()
        counters["inspected"] += len(predictions)
        counters["rejected"] += len(failures)
        if failures:
            monitor.observe_rejected(len(failures))
        results: list[dict[str, Any]] = [{} for _ in files]
        held_items = []
        for (index, image, _), prediction in zip(decoded, predictions, strict=True):
            output = prediction.to_dict()
            item = {"name": names[index], "data": raw[index], "output": output, "size": image.size}
            held_items.append(item)
            row = {"status": "ok", "id": held.add(item), **output}
            row["width"], row["height"] = image.size
            if overlay:
                row["overlay"] = overlay_data_url(image, prediction)
            results[index] = row
        if shadow is not None and decoded:
            if shadow_slots.acquire(blocking=False):
                shadow_pool.submit(
                    run_shadow,
                    [image for _, image, _ in decoded],
                    [ref for _, _, ref in decoded] if paired else None,
                    held_items,
                )
            else:  # the candidate is behind: never slow the line down for it
                counters["shadow_skipped"] += 1
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
    app.state.store = store
    app.state.monitor = monitor
    app.state.shadow_pool = shadow_pool
    return app


def serve(bundle: str | Path, host: str = "127.0.0.1", port: int = 8000, **options) -> None:
    import uvicorn

    app = create_app(bundle, **options)
    print(f"defectkit inspector on http://{host}:{port}/ (API docs at /docs)")
    uvicorn.run(app, host=host, port=port, log_level="warning")
