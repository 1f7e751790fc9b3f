"""sealing.flow's pure logic: the phases a template goes through."""


def test_phases_with_and_without_seal():
    from sealing.flow import next_phase

    def walk(seal):
        p, seen = "CREATE_TEMPLATE", []
        while p != "DONE":
            seen.append(p)
            p = next_phase(p, seal)
        return seen

    assert walk(True) == ["CREATE_TEMPLATE", "COPY_DISKS", "ASSIGN_ILLEGAL", "SEAL", "ASSIGN_LEGAL_SHARED"]
    assert walk(False) == ["CREATE_TEMPLATE", "COPY_DISKS", "ASSIGN_LEGAL_SHARED"]
