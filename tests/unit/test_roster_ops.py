"""Key rotation and revocation on a federation directory (issue 8 §4)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mpc_agg.envelope import BROADCAST, EnvelopeContext, authenticate, parse_envelope, seal_envelope
from mpc_agg.errors import SignatureError
from peers.config import ConfigError, load_federation, load_site
from peers.init import init_federation
from peers.roster_ops import revoke_site, rotate_site_key


def test_rotation_changes_the_key_the_password_and_the_roster_digest(tmp_path: Path) -> None:
    path = init_federation(tmp_path, sites=3)
    before = load_federation(path)
    old_site = load_site(tmp_path / "sites" / "site-1.toml")
    old_password = (tmp_path / "sites" / "site-1.password").read_text()
    passwd_before = (tmp_path / "broker" / "passwd").read_text().splitlines()
    change = rotate_site_key(tmp_path, "site-1")
    after = load_federation(path)
    assert change.old_digest == before.roster.digest.hex() != change.new_digest
    assert after.roster.digest.hex() == change.new_digest
    new_site = load_site(tmp_path / "sites" / "site-1.toml")  # the new key matches the roster
    assert new_site.signing_key.public_bytes() != old_site.signing_key.public_bytes()
    assert (tmp_path / "sites" / "site-1.password").read_text() != old_password
    passwd_after = (tmp_path / "broker" / "passwd").read_text().splitlines()
    assert len(passwd_after) == len(passwd_before)

    def entry(lines: list[str], site: str) -> list[str]:
        return [line for line in lines if line.startswith(f"{site}:")]

    assert entry(passwd_after, "site-1") != entry(passwd_before, "site-1")
    assert entry(passwd_after, "site-0") == entry(passwd_before, "site-0")
    # the other sites are untouched
    assert after.roster.entries[0] == before.roster.entries[0]
    assert oct((tmp_path / "sites" / "site-1.key").stat().st_mode & 0o777) == "0o600"
    # A message the old key signs, even bound to the new roster, does not authenticate.
    context = EnvelopeContext(
        protocol="secagg/1", federation=after.id, roster_digest=after.roster.digest, round_id=1
    )
    forged = seal_envelope(
        context, phase=1, kind=1, sender=1, recipient=BROADCAST, payload=b"x",
        signing_key=old_site.signing_key,
    )  # fmt: skip
    with pytest.raises(SignatureError):
        authenticate(parse_envelope(forged, max_payload=16), after.roster.verify_key(1))


def test_revocation_removes_the_site_everywhere(tmp_path: Path) -> None:
    path = init_federation(tmp_path, sites=4)
    change = revoke_site(tmp_path, "site-2")
    federation = load_federation(path)
    assert [e.name for e in federation.roster.entries] == ["site-0", "site-1", "site-3"]
    assert federation.threshold == 3  # still valid for 3 sites: kept
    assert "threshold" not in change.detail
    assert "site-2" not in (tmp_path / "broker" / "acl").read_text()
    assert not any(
        line.startswith("site-2:")
        for line in (tmp_path / "broker" / "passwd").read_text().splitlines()
    )
    assert not (tmp_path / "sites" / "site-2.key").exists()
    assert (tmp_path / "sites" / "revoked" / "site-2.key").exists()
    with pytest.raises(ConfigError):
        load_site(tmp_path / "sites" / "revoked" / "site-2.toml")
    # the remaining sites still load, with their own keys
    assert load_site(tmp_path / "sites" / "site-3.toml").index == 2


def test_revocation_adjusts_an_invalid_threshold_and_refuses_too_few_sites(
    tmp_path: Path,
) -> None:
    init_federation(tmp_path, sites=3)  # T = 3
    change = revoke_site(tmp_path, "site-0")
    assert "threshold 3 → 2" in change.detail
    assert load_federation(tmp_path / "federation.toml").threshold == 2
    with pytest.raises(ValueError, match="at least 2 sites"):
        revoke_site(tmp_path, "site-1")
    with pytest.raises(ValueError, match="no site named"):
        rotate_site_key(tmp_path, "site-9")
