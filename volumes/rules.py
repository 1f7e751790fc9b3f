"""Volume attribute rules (vdsm's ``update_volume``), as pure stdlib code.

This module has one home but runs in two places: the app validates with it before asking a host,
and it is shipped to every host beside the job helper (``hooks/vmseal_host.py``), where the
volume's metadata file is the truth and the rules are enforced. It must import nothing but the
standard library.

    type        LEAF, SHARED (INTERNAL reserved)  LEAF -> SHARED only, and only without a parent
    legality    LEGAL, ILLEGAL                     either way; setting the current value is an error
    generation  0..999                             must equal the caller's expectation; +1 per change,
                                                   999 wraps to 0
A SHARED volume is never modified again. ``meta_problems`` checks metadata read back from a host.
"""

LEAF, SHARED, INTERNAL = "LEAF", "SHARED", "INTERNAL"
LEGAL, ILLEGAL = "LEGAL", "ILLEGAL"
TYPES = (LEAF, SHARED, INTERNAL)
LEGALITIES = (LEGAL, ILLEGAL)
GENERATION_MAX = 999


class RuleError(ValueError):
    code = "volume_refused"


class StaleGeneration(RuleError):
    code = "stale_generation"


class NoChange(RuleError):
    code = "no_change"


class IllegalChange(RuleError):
    code = "illegal_change"


class ReadOnlyVolume(RuleError):
    code = "volume_shared"


def next_generation(generation: int) -> int:
    return 0 if generation >= GENERATION_MAX else generation + 1


def check_writable(meta: dict) -> None:
    """Refuse any write to a SHARED volume."""
    if meta.get("type") == SHARED:
        raise ReadOnlyVolume(f"volume {meta.get('id', '?')} is SHARED: it is never modified again")


def plan_update(meta: dict, *, generation: int, legality: str | None = None, type: str | None = None) -> dict:
    """The metadata after an update_volume, or a RuleError. ``meta`` is not changed."""
    if legality is None and type is None:
        raise NoChange("update_volume needs legality and/or type")
    if generation != meta["generation"]:
        raise StaleGeneration(
            f"volume {meta.get('id', '?')}: generation is {meta['generation']}, the caller expected {generation}"
        )
    check_writable(meta)
    new = dict(meta)
    if legality is not None:
        if legality not in LEGALITIES:
            raise IllegalChange(f"unknown legality {legality!r}")
        if legality == meta["legality"]:
            raise NoChange(f"volume {meta.get('id', '?')} is already {legality}")
        new["legality"] = legality
    if type is not None:
        if type not in TYPES:
            raise IllegalChange(f"unknown volume type {type!r}")
        if type == meta["type"]:
            raise NoChange(f"volume {meta.get('id', '?')} is already {type}")
        if (meta["type"], type) != (LEAF, SHARED):
            raise IllegalChange(f"volume type can only change LEAF -> SHARED, not {meta['type']} -> {type}")
        if meta.get("parent"):
            raise IllegalChange("only a volume without a parent can become SHARED")
        new["type"] = type
    new["generation"] = next_generation(meta["generation"])
    return new


FORMATS = ("qcow2", "raw")


def meta_problems(meta, vol_id: str | None = None) -> list[str]:
    """What is wrong with a volume's metadata as read from a host (empty: nothing). The host's
    metadata is the truth, but only well-formed metadata is mirrored into the app."""
    if not isinstance(meta, dict):
        return ["metadata is not a JSON object"]
    problems = []
    if vol_id is not None and meta.get("id") != vol_id:
        problems.append(f"id is {meta.get('id')!r}, not the file's {vol_id}")
    if meta.get("type") not in TYPES:
        problems.append(f"unknown type {meta.get('type')!r}")
    if meta.get("legality") not in LEGALITIES:
        problems.append(f"unknown legality {meta.get('legality')!r}")
    gen = meta.get("generation")
    if not isinstance(gen, int) or isinstance(gen, bool) or not 0 <= gen <= GENERATION_MAX:
        problems.append(f"generation {gen!r} is not 0..{GENERATION_MAX}")
    if meta.get("format") not in FORMATS:
        problems.append(f"unknown format {meta.get('format')!r}")
    if meta.get("parent") is not None and not isinstance(meta.get("parent"), str):
        problems.append("parent is neither null nor a volume id")
    return problems
