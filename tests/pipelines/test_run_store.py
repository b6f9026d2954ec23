"""Stage names and the order of a run's stages, as the run store spells them."""

from __future__ import annotations

import pytest

from pipelines.run_store import EVALUATE, INGEST, TRAIN, split_stage, stage_name, stage_plan
from prvos_core.config import config_from_dict


def _config(**top):
    return config_from_dict({"data": {"root": "d"}, **top})


def test_stage_plan_orders_the_rounds():
    assert stage_plan(_config(rounds=1)) == [
        "ingest", "frames", "text", "r0-train", "r0-infer", "r0-refine", "r1-train", "r0-evaluate", "r1-evaluate",
    ]  # fmt: skip
    assert stage_plan(_config(rounds=2, pseudo_labels=False, frames={"enabled": False})) == [
        "ingest", "text", "r0-train", "r1-train", "r2-train", "r0-evaluate", "r1-evaluate", "r2-evaluate",
    ]  # fmt: skip


def test_split_stage_inverts_stage_name():
    for name in stage_plan(_config(rounds=2)):
        round_index, kind = split_stage(name)
        assert stage_name(kind, round_index) == name
    assert (stage_name(INGEST), stage_name(TRAIN, 3)) == ("ingest", "r3-train")


@pytest.mark.parametrize("kind, round_index", [(INGEST, 0), (EVALUATE, None), ("trian", 1)])
def test_stage_name_refuses_a_kind_without_its_round(kind, round_index):
    with pytest.raises(AssertionError):
        stage_name(kind, round_index)
