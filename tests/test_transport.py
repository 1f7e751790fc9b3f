"""hostjobs.transport's pure logic: parsing a pinned host key."""

import pytest

from hostjobs.transport import parse_host_key


def test_host_key_parsing():
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHYxXA9dCvPrHMuXWbnnUMW7yDpDlHgZ1aqYjakW6cwK root@h"
    assert parse_host_key(key)[0] == "ssh-ed25519"
    for bad, why in (("", "expected"), ("ssh-dss AAAA", "unsupported"), ("ssh-ed25519 ***", "base64"),
                     ("ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIHYxXA9dCvPrHMuXWbnnUMW7yDpDlHgZ1aqYjakW6cwK", "match")):
        with pytest.raises(ValueError, match=why):
            parse_host_key(bad)
