"""What a stage returns: a frozen dataclass of typed fields that writes itself into its commit marker and reads
itself back from one.

A marker keeps two flat maps (`pipelines.run_store.StageMarker`): `outputs` (artifact name -> URI, or short
text such as an encoder identity) and `metrics` (name -> float). Each field of a result says where it goes:

- `output()` fields go to `outputs` as text (an int such as the text dim as its digits);
- a `measures()` field (a dict[str, float], e.g. evaluate's score table) is spread into `metrics`;
- every other field goes to `metrics` as a float;
- a None field (something the stage did not measure this time) is left out.

Reading back converts each value to its field's type; markers keep the names they always had, so a marker
written before results were typed reads the same.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from prvos_core.errors import StorageError

_OUTPUT, _MEASURES = "marker_output", "marker_measures"
Result = TypeVar("Result", bound="StageResult")


def output(key: str | None = None, **field_options: Any) -> Any:
    """A field kept in the marker's `outputs`; `key`: its name there when that differs from the field's name
    (names in markers are fixed by the markers already written)."""
    return dataclasses.field(metadata={_OUTPUT: key}, **field_options)


def measures() -> Any:
    """A dict[str, float] field whose items are metrics of their own; it takes every metric of a marker that no
    other field names."""
    return dataclasses.field(default_factory=dict, metadata={_MEASURES: True})


@dataclass(frozen=True, kw_only=True)
class StageResult:
    """The base of the six stage results: the stage kind, and the way into and out of a commit marker."""

    stage: ClassVar[str]  # the stage kind ("train"), as in the stage folder names ("r0-train")

    def to_marker(self) -> tuple[dict[str, str], dict[str, float]]:
        """(outputs, metrics) as the commit marker keeps them."""
        outputs: dict[str, str] = {}
        metrics: dict[str, float] = {}
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if value is None:
                continue
            if _MEASURES in item.metadata:
                metrics.update({key: float(number) for key, number in value.items()})
            elif _OUTPUT in item.metadata:
                outputs[item.metadata[_OUTPUT] or item.name] = str(value)
            else:
                metrics[item.name] = float(value)
        return outputs, metrics

    @classmethod
    def from_marker(cls: type[Result], outputs: dict[str, str], metrics: dict[str, float]) -> Result:
        """The result a commit marker recorded; a marker without a required value raises StorageError."""
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        named = {item.name for item in dataclasses.fields(cls) if not item.metadata}
        for item in dataclasses.fields(cls):
            if _MEASURES in item.metadata:
                values[item.name] = {key: float(number) for key, number in metrics.items() if key not in named}
                continue
            source, key = (
                (outputs, item.metadata[_OUTPUT] or item.name) if _OUTPUT in item.metadata else (metrics, item.name)
            )
            if key in source:
                values[item.name] = _as_type(hints[item.name], source[key])
        required = [
            item.name
            for item in dataclasses.fields(cls)
            if item.name not in values
            and item.default is dataclasses.MISSING
            and item.default_factory is dataclasses.MISSING
        ]
        if required:
            raise StorageError(f"the commit marker of a {cls.stage} stage lacks {', '.join(required)}")
        return cls(**values)

    @property
    def metrics(self) -> dict[str, float]:
        """Every measure of the result as the marker keeps it (for lineage and tables)."""
        return self.to_marker()[1]


def _as_type(hint: Any, value: Any) -> Any:
    """A marker's value as the field's type: int, float or str (`X | None` as X)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(kind for kind in typing.get_args(hint) if kind is not type(None))
    return hint(value)
