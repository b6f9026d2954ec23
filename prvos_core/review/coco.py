"""The review queue as COCO instance annotations with RLE masks, for tools that take COCO (CVAT imports it).

pycocotools encodes the masks; one image per queued frame, one annotation per image holding the teacher's mask,
with the expression and the uncertainty score in the annotation's `attributes` (CVAT's place for them).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from pycocotools import mask as coco_mask

from prvos_core.review.label_studio import AnnotationError, Submitted

CATEGORY = {"id": 1, "name": "object", "supercategory": "referred"}


def rle(mask: np.ndarray) -> dict:
    """COCO compressed RLE of a (H, W) 0/1 mask, its counts as text (JSON-ready)."""
    encoded = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in encoded["size"]], "counts": encoded["counts"].decode("ascii")}


def decode(segmentation: dict) -> np.ndarray:
    """A COCO RLE (counts as text or bytes) -> (H, W) uint8 0/1 mask."""
    counts = segmentation["counts"]
    encoded = {"size": segmentation["size"], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    return coco_mask.decode(encoded).astype(np.uint8)


def dataset(entries: list[dict], description: str) -> dict:
    """A COCO dataset: each entry has file_name, height, width, mask (H, W), text, score, key."""
    images, annotations = [], []
    for number, entry in enumerate(entries, start=1):
        images.append(
            {"id": number, "file_name": entry["file_name"], "height": entry["height"], "width": entry["width"]}
        )
        segmentation = rle(entry["mask"])
        annotations.append(
            {
                "id": number,
                "image_id": number,
                "category_id": CATEGORY["id"],
                "iscrowd": 0,
                "segmentation": segmentation,
                "area": float(coco_mask.area(decode_bytes(segmentation))),
                "bbox": [float(v) for v in coco_mask.toBbox(decode_bytes(segmentation))],
                "attributes": {
                    "expression": entry["text"],
                    "uncertainty": entry["score"],
                    "prvos_key": entry["key"],
                    "prvos_export": entry["export_id"],
                },
            }  # fmt: skip
        )
    return {
        "info": {"description": description},
        "images": images,
        "annotations": annotations,
        "categories": [CATEGORY],
    }


def submitted(annotation: dict, size: tuple[int, int], source: str) -> Submitted:
    """A corrected COCO annotation (RLE) as the mask of a frame of `size` (H, W); AnnotationError says why not.
    An all-zero mask counts only with the attribute `absent: true` (the object is not in the frame)."""
    segmentation = annotation.get("segmentation")
    if not isinstance(segmentation, dict) or "counts" not in segmentation or "size" not in segmentation:
        raise AnnotationError("no RLE segmentation (polygons are not read from COCO; export masks as RLE)")
    if list(segmentation["size"]) != list(size):
        raise AnnotationError(
            f"an RLE of {segmentation['size'][1]}x{segmentation['size'][0]}, the frame is {size[1]}x{size[0]}"
        )
    try:
        mask = decode(segmentation)
    except (TypeError, ValueError, UnicodeEncodeError) as error:
        raise AnnotationError(f"the RLE does not decode ({error})") from None
    absent = bool((annotation.get("attributes") or {}).get("absent"))
    if not mask.any() and not absent:
        raise AnnotationError("empty mask: set the attribute absent: true if the object is not in the frame")
    stamp = str(annotation.get("updated_at") or datetime.now(UTC).isoformat(timespec="seconds"))
    return Submitted(mask, absent and not mask.any(), f"coco:{Path(source).name}", stamp)


def decode_bytes(segmentation: dict) -> dict:
    """The RLE as pycocotools takes it (counts as bytes)."""
    return {"size": segmentation["size"], "counts": segmentation["counts"].encode("ascii")}
