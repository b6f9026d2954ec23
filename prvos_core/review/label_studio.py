"""Label Studio's task and result formats for the review loop: the labelling view, tasks with the teacher's mask
as a prediction, and a submitted annotation back to a mask.

The object is drawn as polygons (Label Studio's `PolygonLabels`): the teacher's mask goes out as its contours
(OpenCV), and an annotator's polygons come back filled (OpenCV). Polygon points are percentages of the image,
as Label Studio stores them. A choice "object absent" says the object is not in the frame (an empty mask that is
meant, not forgotten). Brush masks use Label Studio's own run-length code, which only its SDK reads, and the SDK
pins numpy and OpenCV below this project's versions: a brush result is rejected with the reason, and the view
offers polygons only.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import cv2
import numpy as np

from prvos_core.errors import DataError

MASK_TOOL, IMAGE, TEXT, ABSENT = "mask", "image", "text", "absent"
OBJECT_LABEL, ABSENT_CHOICE = "object", "object absent"
POLYGON_EPSILON = 0.5  # pixels: contour simplification (cv2.approxPolyDP), well under a pixel of the mask

LABEL_CONFIG = f"""<View>
  <Header value="$text"/>
  <Image name="{IMAGE}" value="$image" zoom="true"/>
  <PolygonLabels name="{MASK_TOOL}" toName="{IMAGE}" strokeWidth="2" opacity="0.4">
    <Label value="{OBJECT_LABEL}" background="#ff4d4f"/>
  </PolygonLabels>
  <Choices name="{ABSENT}" toName="{IMAGE}" choice="single">
    <Choice value="{ABSENT_CHOICE}"/>
  </Choices>
</View>
"""


class AnnotationError(DataError):
    """One submitted annotation cannot become a mask; its message is the quarantine reason."""


@dataclass(frozen=True)
class Submitted:
    """A task's annotation as a mask, with who made it and when."""

    mask: np.ndarray  # (H, W) uint8 0/1; all zeros when `empty`
    empty: bool
    annotator: str
    annotated_at: str


def polygons(mask: np.ndarray) -> list[list[list[float]]]:
    """The outer contours of a 0/1 mask (H, W) as polygons of [x %, y %] points (holes are filled)."""
    height, width = mask.shape
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    shapes = []
    for contour in contours:
        points = cv2.approxPolyDP(contour, POLYGON_EPSILON, True).reshape(-1, 2).astype(np.float64)
        if len(points) < 3:  # a one- or two-pixel speck: no area to draw
            continue
        # Pixel (x, y) covers [x, x+1): its centre is at x + 0.5 of the image's width.
        shapes.append([[100.0 * (x + 0.5) / width, 100.0 * (y + 0.5) / height] for x, y in points])
    return shapes


def polygon_results(mask: np.ndarray) -> list[dict]:
    """Label Studio result items drawing `mask` (one polygon per outer contour)."""
    height, width = mask.shape
    return [
        {
            "from_name": MASK_TOOL,
            "to_name": IMAGE,
            "type": "polygonlabels",
            "original_width": int(width),
            "original_height": int(height),
            "image_rotation": 0,
            "value": {"points": shape, "closed": True, "polygonlabels": [OBJECT_LABEL]},
        }  # fmt: skip
        for shape in polygons(mask)
    ]


def task(image_url: str, text: str, data: dict, mask: np.ndarray, model_version: str, score: float) -> dict:
    """One import task: the frame, the expression, our bookkeeping in `data`, and the teacher's mask as a
    prediction whose `score` is the uncertainty score (higher = less sure)."""
    prediction = {"model_version": model_version, "score": round(float(score), 6), "result": polygon_results(mask)}
    return {"data": {IMAGE: image_url, TEXT: text, **data}, "predictions": [prediction]}


def submitted(item: dict, size: tuple[int, int]) -> Submitted:
    """The newest submitted (not cancelled) annotation of an exported task as a mask of `size` (H, W).

    Raises AnnotationError with the reason: no annotation, a brush result, a drawing of another image size, an
    empty annotation that does not say the object is absent, or an unreadable result.
    """
    annotations = [a for a in item.get("annotations") or [] if isinstance(a, dict) and not a.get("was_cancelled")]
    if not annotations:
        raise AnnotationError("no submitted annotation")
    annotation = max(annotations, key=lambda a: (str(a.get("updated_at") or a.get("created_at") or ""), a.get("id", 0)))
    height, width = size
    mask = np.zeros((height, width), np.uint8)
    absent, drawn = False, 0
    for result in annotation.get("result") or []:
        kind = result.get("type")
        value = result.get("value") or {}
        if kind == "choices":
            absent = absent or ABSENT_CHOICE in (value.get("choices") or [])
            continue
        if kind == "brushlabels":
            raise AnnotationError("a brush mask: draw the object with the polygon tool of the exported project")
        if kind != "polygonlabels":
            continue
        shape = (result.get("original_height"), result.get("original_width"))
        if shape != (height, width):
            raise AnnotationError(f"drawn on an image of {shape[1]}x{shape[0]}, the frame is {width}x{height}")
        try:
            points = np.asarray(value["points"], np.float64).reshape(-1, 2)
        except (KeyError, TypeError, ValueError):
            raise AnnotationError("a polygon without readable points") from None
        if len(points) < 3 or not np.isfinite(points).all():
            raise AnnotationError("a polygon with fewer than 3 finite points")
        pixels = np.rint(points / 100.0 * (width, height) - 0.5).astype(np.int32)
        cv2.fillPoly(mask, [pixels], 1)
        drawn += 1
    if absent and drawn:
        raise AnnotationError("both 'object absent' and a drawn object")
    if not absent and not mask.any():
        raise AnnotationError("empty annotation: draw the object, or choose 'object absent' if it is not in the frame")
    return Submitted(mask, absent, _annotator(annotation), _time(annotation))


def _annotator(annotation: dict) -> str:
    who = annotation.get("completed_by")
    if isinstance(who, dict):
        return str(who.get("email") or who.get("username") or who.get("id"))
    return f"label-studio-user-{who}" if who is not None else "unknown"


def _time(annotation: dict) -> str:
    stamp = annotation.get("updated_at") or annotation.get("created_at")
    return str(stamp) if stamp else datetime.now(UTC).isoformat(timespec="seconds")
