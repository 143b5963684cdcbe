"""The feedback store: what operators said about the model's calls, and where a candidate
model disagreed with the current one (shadow mode). One SQLite database with the images in a
folder beside it, kept next to the served bundle by default.

Durability: an image is written to a temporary file, flushed to disk and renamed into place
(content-addressed, so the same image twice is stored once) before its record is committed;
the database runs in WAL mode with synchronous=FULL, so a record is on disk when `add`
returns. A service killed mid-write loses at most the request it had not yet answered, and
never leaves a record pointing to a missing or half-written image. Safe under concurrent
requests (each call opens its own connection; SQLite serialises the writers).

`review` reads the store back: which calls operators overturned, how often per class, and
exports the answers as a dataset defectkit reads (class folders, or COCO JSON with the
operators' boxes for detect and segment models)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from defectkit.data.samples import ok_class
from defectkit.tasks import get_task

DB_FILE = "feedback.db"
IMAGES = "images"
KINDS = ("feedback", "shadow")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    kind TEXT NOT NULL,            -- feedback: an operator's answer; shadow: a disagreement
    image TEXT NOT NULL,           -- the name the image was sent under
    image_file TEXT NOT NULL,      -- images/<sha256><suffix>, relative to the store
    image_sha256 TEXT NOT NULL,
    task TEXT NOT NULL,
    model TEXT NOT NULL,           -- the answering bundle's weights_sha256
    model_label TEXT NOT NULL,
    model_ok INTEGER,              -- 1 OK, 0 NG, NULL when the model says nothing of OK/NG
    output TEXT NOT NULL,          -- the model's prediction (JSON)
    answer TEXT,                   -- the operator's answer (JSON): label, ok, boxes
    candidate TEXT,                -- shadow: the candidate's prediction (JSON)
    operator TEXT NOT NULL DEFAULT '',
    note TEXT NOT NULL DEFAULT ''
)
"""


class FeedbackError(ValueError):
    """An answer the store cannot take (unknown class, boxes outside the image...)."""


def _fsync_dir(folder: Path) -> None:
    if os.name == "posix":
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class FeedbackStore:
    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.images = self.folder / IMAGES
        self.images.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / DB_FILE
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(_SCHEMA)

    def _connect(self) -> _Closing:
        db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        db.execute("PRAGMA synchronous=FULL")
        db.row_factory = sqlite3.Row
        return _Closing(db)

    def _save_image(self, name: str, data: bytes) -> tuple[str, str]:
        digest = hashlib.sha256(data).hexdigest()
        suffix = Path(name).suffix.lower() or ".img"
        relative = f"{IMAGES}/{digest}{suffix}"
        target = self.folder / relative
        if not target.exists():
            handle, temporary = tempfile.mkstemp(dir=self.images, prefix=".incoming-")
            try:
                with os.fdopen(handle, "wb") as out:
                    out.write(data)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(temporary, target)
            except BaseException:
                Path(temporary).unlink(missing_ok=True)
                raise
            _fsync_dir(self.images)
        return relative, digest

    def add(
        self,
        kind: str,
        image: str,
        data: bytes,
        task: str,
        model: str,
        output: dict[str, Any],
        answer: dict[str, Any] | None = None,
        candidate: dict[str, Any] | None = None,
        operator: str = "",
        note: str = "",
    ) -> int:
        """Store one record; it is on disk when this returns its id."""
        if kind not in KINDS:
            raise FeedbackError(f"unknown record kind {kind!r}; one of {KINDS}")
        relative, digest = self._save_image(image, data)
        ok = output.get("ok")
        with self._connect() as db:
            cursor = db.execute(
                "INSERT INTO records (time, kind, image, image_file, image_sha256, task, model, "
                "model_label, model_ok, output, answer, candidate, operator, note) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    time.time(),
                    kind,
                    image,
                    relative,
                    digest,
                    task,
                    model,
                    str(output.get("label", "")),
                    None if ok is None else int(bool(ok)),
                    json.dumps(output),
                    None if answer is None else json.dumps(answer),
                    None if candidate is None else json.dumps(candidate),
                    operator,
                    note,
                ),
            )
            return int(cursor.lastrowid)

    def records(self, kind: str | None = None) -> list[dict[str, Any]]:
        query = "SELECT * FROM records" + (" WHERE kind = ?" if kind else "") + " ORDER BY id"
        with self._connect() as db:
            rows = db.execute(query, (kind,) if kind else ()).fetchall()
        out = []
        for row in rows:
            record = dict(row)
            for key in ("output", "answer", "candidate"):
                record[key] = json.loads(record[key]) if record[key] else None
            record["model_ok"] = None if record["model_ok"] is None else bool(record["model_ok"])
            out.append(record)
        return out

    def count(self) -> int:
        with self._connect() as db:
            return int(db.execute("SELECT COUNT(*) FROM records").fetchone()[0])


class _Closing:
    """A connection that closes at the end of a `with` block (sqlite3's own only commits)."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        return self.db

    def __exit__(self, *exc: Any) -> None:
        self.db.close()


def check_answer(
    answer: dict[str, Any], task: str, classes: list[str], size: tuple[int, int] | None
) -> dict[str, Any]:
    """An operator's answer, checked and in one shape: {"label", "ok", "boxes"}. For a task
    that decides by class (classify) answers name a class; the others say OK or NG,
    optionally with boxes drawn on the image (x, y, width, height in image pixels, an
    optional class label)."""
    good = ok_class(classes)
    label = answer.get("label")
    ok = answer.get("ok")
    if get_task(task).decides_by_class:
        if label not in classes:
            raise FeedbackError(f"answer label {label!r} is not a class of this model: {classes}")
        ok = None if good is None else label == good
    else:
        if not isinstance(ok, bool):
            raise FeedbackError('say whether the image is OK: {"ok": true} or {"ok": false}')
        if label is None:
            label = "ok" if ok else "defect"
    boxes = []
    for box in answer.get("boxes") or []:
        try:
            x, y, w, h = (float(box[k]) for k in ("x", "y", "width", "height"))
        except (KeyError, TypeError, ValueError):
            raise FeedbackError(f"a box needs numbers x, y, width, height; got {box!r}") from None
        if w <= 0 or h <= 0 or x < 0 or y < 0:
            raise FeedbackError(f"box {box!r} has no area or starts outside the image")
        if size is not None and (x + w > size[0] + 1 or y + h > size[1] + 1):
            raise FeedbackError(f"box {box!r} runs past the {size[0]}x{size[1]} image")
        boxes.append({"x": x, "y": y, "width": w, "height": h, "label": box.get("label") or label})
    if boxes and ok:
        raise FeedbackError("an OK answer has no defect boxes: drop the boxes or answer NG")
    return {"label": label, "ok": ok, "boxes": boxes}


def overturns(task: str, answer: dict[str, Any], label: str, ok: bool | None) -> bool:
    """Whether an operator's answer differs from the model's call (its label, or OK/NG)."""
    if get_task(task).decides_by_class:
        return answer.get("label") != label
    return answer.get("ok") != ok


def overturned(record: dict[str, Any]) -> bool:
    """Whether a stored record's answer overturned the model's call."""
    return overturns(
        record["task"], record["answer"] or {}, record["model_label"], record["model_ok"]
    )


def summarise(store: FeedbackStore) -> dict[str, Any]:
    """Counts an engineer reads first: answers, overturned calls per model label (and what the
    operators said instead), shadow disagreements."""
    feedback = store.records("feedback")
    shadow = store.records("shadow")
    per_label: dict[str, Counter] = {}
    for record in feedback:
        counts = per_label.setdefault(record["model_label"], Counter())
        counts["answered"] += 1
        if overturned(record):
            counts["overturned"] += 1
            counts[f"-> {(record['answer'] or {}).get('label')}"] += 1
    return {
        "store": str(store.folder),
        "answers": len(feedback),
        "overturned": sum(overturned(r) for r in feedback),
        "per_model_label": {k: dict(v) for k, v in sorted(per_label.items())},
        "shadow_disagreements": len(shadow),
        "models": sorted({r["model"] for r in feedback + shadow}),
    }


def export_dataset(store: FeedbackStore, out: str | Path) -> dict[str, Any]:
    """The operators' answers as a dataset defectkit reads: classify and anomaly answers as
    class folders (<out>/<answer label>/); detect and segment answers as COCO JSON
    (<out>/_annotations.coco.json beside the images), the drawn boxes as the objects (a box
    is also its own polygon, so a segment task reads it as a mask). An NG answer without a
    box cannot teach a box or mask model and is listed, not exported. The latest answer for
    an image wins."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty: export into a new folder")
    latest: dict[str, dict[str, Any]] = {}
    for record in store.records("feedback"):
        latest[record["image_sha256"]] = record
    records = list(latest.values())
    tasks = {r["task"] for r in records}
    if len(tasks) > 1:
        raise FeedbackError(f"the store mixes tasks {sorted(tasks)}: export one model's answers")
    out.mkdir(parents=True, exist_ok=True)
    boxes_wanted = any(get_task(t).answers_locate for t in tasks)
    exported, left_out = 0, []
    images, annotations, categories = [], [], {}
    for record in records:
        answer = record["answer"] or {}
        source = store.folder / record["image_file"]
        name = f"{record['id']:06d}_{Path(record['image']).name}"
        if not boxes_wanted:
            folder = out / str(answer["label"])
            folder.mkdir(exist_ok=True)
            shutil.copy2(source, folder / name)
            exported += 1
            continue
        if not answer.get("ok") and not answer.get("boxes"):
            left_out.append(record["image"])
            continue
        from PIL import Image

        with Image.open(source) as image:
            width, height = image.size
        shutil.copy2(source, out / name)
        image_id = len(images) + 1
        images.append({"id": image_id, "file_name": name, "width": width, "height": height})
        for box in answer.get("boxes", []):
            category = categories.setdefault(box["label"], len(categories) + 1)
            x, y, w, h = box["x"], box["y"], box["width"], box["height"]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                    "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]],
                }
            )
        exported += 1
    if boxes_wanted:
        coco = {
            "images": images,
            "annotations": annotations,
            "categories": [{"id": i, "name": n} for n, i in categories.items()],
        }
        (out / "_annotations.coco.json").write_text(json.dumps(coco, indent=1))
    if left_out:
        (out / "needs_boxes.txt").write_text("\n".join(left_out) + "\n")
    return {
        "folder": str(out),
        "layout": "coco" if boxes_wanted else "class folders",
        "images": exported,
        "left_out": left_out,
    }
