"""volumes.rules: what a volume metadata update may change (vdsm's update_volume rules)."""

import pytest

from volumes import rules

META = {"id": "v", "type": "LEAF", "legality": "LEGAL", "generation": 7, "parent": None}


def test_update_bumps_generation_and_changes_only_what_was_asked():
    new = rules.plan_update(META, generation=7, legality="ILLEGAL")
    assert new == {**META, "legality": "ILLEGAL", "generation": 8}
    assert META["legality"] == "LEGAL", "the input is not modified"


def test_legal_and_shared_in_one_update_bumps_once():
    ill = {**META, "legality": "ILLEGAL"}
    assert rules.plan_update(ill, generation=7, legality="LEGAL", type="SHARED")["generation"] == 8


def test_generation_wraps_at_999():
    assert rules.plan_update({**META, "generation": 999}, generation=999, legality="ILLEGAL")["generation"] == 0


@pytest.mark.parametrize(
    ("meta", "kwargs", "error"),
    [
        (META, {"generation": 6, "legality": "ILLEGAL"}, rules.StaleGeneration),
        (META, {"generation": 7, "legality": "LEGAL"}, rules.NoChange),
        (META, {"generation": 7}, rules.NoChange),
        (META, {"generation": 7, "type": "LEAF"}, rules.NoChange),
        (META, {"generation": 7, "type": "INTERNAL"}, rules.IllegalChange),
        ({**META, "parent": "p"}, {"generation": 7, "type": "SHARED"}, rules.IllegalChange),
        ({**META, "type": "SHARED"}, {"generation": 7, "legality": "ILLEGAL"}, rules.ReadOnlyVolume),
        ({**META, "type": "SHARED"}, {"generation": 7, "type": "LEAF"}, rules.ReadOnlyVolume),
        (META, {"generation": 7, "legality": "BROKEN"}, rules.IllegalChange),
    ],
)
def test_update_refusals(meta, kwargs, error):
    with pytest.raises(error):
        rules.plan_update(meta, **kwargs)


def test_shared_volume_is_not_writable():
    with pytest.raises(rules.ReadOnlyVolume):
        rules.check_writable({**META, "type": "SHARED"})
    rules.check_writable(META)  # a LEAF is
