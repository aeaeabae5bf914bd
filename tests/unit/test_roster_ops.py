"""Key rotation and revocation on a federation directory (issue 8 §4)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mpc_agg.crypto import VerifyKey
from mpc_agg.envelope import BROADCAST, EnvelopeContext, authenticate, parse_envelope, seal_envelope
from mpc_agg.errors import SignatureError
from peers import roster_ops
from peers.audit import AuditError, AuditLog, verify_audit_log
from peers.cli import main as cli_main
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
    log = _rounds_logged(tmp_path / "sites" / "site-2.toml", rounds=1).read_bytes()
    change = revoke_site(tmp_path, "site-2")
    assert not (tmp_path / "sites" / "site-2.audit.jsonl").exists()  # its history moves too
    assert (tmp_path / "sites" / "revoked" / "site-2.audit.jsonl").read_bytes() == log
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


# --------------------------------------------------------------------------- audit logs


def _rounds_logged(site: Path, rounds: int) -> Path:
    """The site's audit log after ``rounds`` rounds, as PeerNode writes it (signed)."""
    config = load_site(site)
    log = AuditLog(config.audit_log, signing_key=config.signing_key)
    for k in range(1, rounds + 1):
        log.append({"federation": config.federation.id, "round": k, "outcome": "aggregate"})
    return config.audit_log


def test_rotation_records_itself_in_the_sites_audit_log(tmp_path: Path) -> None:
    # A site that ran rounds keeps them: its log verifies under the new roster key, it
    # appends under the new key, and its round ids go on (no reuse, no reset).
    init_federation(tmp_path, sites=3)
    site = tmp_path / "sites" / "site-0.toml"
    log_path = _rounds_logged(site, rounds=2)
    old_key = load_site(site).signing_key
    change = rotate_site_key(tmp_path, "site-0")
    assert f"rotation recorded in its audit log {log_path} (line 3)" in change.detail
    assert not (tmp_path / "sites" / "site-0.key.previous").exists()
    config = load_site(site)  # the new key, as the roster lists it
    roster_key = load_federation(tmp_path / "federation.toml").roster.verify_key(0)
    assert verify_audit_log(log_path, verify_key=roster_key).lines == 3
    log = AuditLog(log_path, signing_key=config.signing_key)
    assert log.last_round(config.federation.id) == 2
    log.append({"federation": config.federation.id, "round": 3, "outcome": "aggregate"})
    assert verify_audit_log(log_path, verify_key=roster_key).ok
    # the old key no longer speaks for the log
    assert not verify_audit_log(log_path, verify_key=VerifyKey(old_key.public_bytes())).ok


def test_a_broken_audit_log_stops_the_rotation_before_anything_changes(tmp_path: Path) -> None:
    path = init_federation(tmp_path, sites=3)
    site = tmp_path / "sites" / "site-1.toml"
    log_path = _rounds_logged(site, rounds=2)
    log_path.write_text(log_path.read_text().replace('"round":1', '"round":7'))
    before = {p.name: p.read_bytes() for p in (tmp_path / "sites").iterdir()}
    digest = load_federation(path).roster.digest
    with pytest.raises(AuditError, match="broken audit log"):
        rotate_site_key(tmp_path, "site-1")
    assert load_federation(path).roster.digest == digest
    assert {p.name: p.read_bytes() for p in (tmp_path / "sites").iterdir()} == before


def test_without_the_sites_log_here_the_rotation_says_how_to_record_it(tmp_path: Path) -> None:
    init_federation(tmp_path, sites=3)
    (tmp_path / "sites" / "site-2.audit.jsonl").unlink()  # the log lives at the site
    change = rotate_site_key(tmp_path, "site-2")
    assert "no rounds in an audit log of site-2" in change.detail
    assert "mpc-agg audit rotate" in change.detail
    assert not (tmp_path / "sites" / "site-2.key.previous").exists()


def test_audit_rotate_records_the_rotation_at_a_site_that_keeps_its_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("peers.cli.keep_freed_memory", lambda: None)  # not in pytest's heap
    # The operator's copy has no log; the site's log is signed by the old key until the
    # site records the rotation with its old key file (`mpc-agg audit rotate`).
    init_federation(tmp_path, sites=3)
    site = tmp_path / "sites" / "site-1.toml"
    old_key_file = tmp_path / "old-site-1.key"
    old_key_file.write_bytes((tmp_path / "sites" / "site-1.key").read_bytes())
    old_key_file.chmod(0o600)
    old_key = load_site(site).signing_key
    log_path = load_site(site).audit_log
    log_path.unlink()  # not in the operator's copy: at the site
    rotate_site_key(tmp_path, "site-1")
    log = AuditLog(log_path, signing_key=old_key)  # the site's rounds, before it heard
    log.append({"federation": "x", "round": 1})
    with pytest.raises(AuditError, match="mpc-agg audit rotate"):
        AuditLog(log_path, signing_key=load_site(site).signing_key)
    # a wrong previous key is refused, and changes nothing
    wrong = tmp_path / "wrong.key"
    wrong.write_bytes((tmp_path / "sites" / "site-0.key").read_bytes())
    wrong.chmod(0o600)
    before = log_path.read_bytes()
    args = ["audit", "rotate", "--config", str(site), "--previous-key"]
    assert cli_main([*args, str(wrong)]) == 1
    assert "broken audit log" in capsys.readouterr().err
    assert log_path.read_bytes() == before
    assert cli_main([*args, str(old_key_file)]) == 0
    assert "rotation to site-1's current key recorded (line 2)" in capsys.readouterr().out
    roster_key = load_federation(tmp_path / "federation.toml").roster.verify_key(1)
    assert verify_audit_log(log_path, verify_key=roster_key).lines == 2
    assert cli_main([*args, str(old_key_file)]) == 0  # once is enough
    assert "already verifies" in capsys.readouterr().out
    assert verify_audit_log(log_path, verify_key=roster_key).lines == 2
    # a previous key file that is not one is a configuration error
    (tmp_path / "bad.key").write_text("nope\n")
    (tmp_path / "bad.key").chmod(0o600)
    log_path.write_bytes(before)
    assert cli_main([*args, str(tmp_path / "bad.key")]) == 2
    assert "64 hex characters" in capsys.readouterr().err


@pytest.mark.parametrize("site", ["site-2", "site-0"])
def test_revoking_keeps_the_tables_after_the_sites_block(tmp_path: Path, site: str) -> None:
    # init writes [[sites]] last, so an operator's appended [dp] or [hygiene] follows the
    # last site's block: revoking that site must not take them with it (DP off, silently).
    path = init_federation(tmp_path, sites=3)
    with path.open("a") as toml:
        toml.write(
            "\n[dp]\nnoise_multiplier = 1.0\nclip_norm = 1.0\ndelta = 1e-5\nepsilon = 10.0\n"
            "\n[hygiene]\npad_frames = true\n"
        )
    before = load_federation(path)
    assert before.dp is not None
    revoke_site(tmp_path, site)
    after = load_federation(path)
    assert [e.name for e in after.roster.entries] == [
        e.name for e in before.roster.entries if e.name != site
    ]
    assert after.dp == before.dp
    assert after.hygiene == before.hygiene


def test_a_roster_change_that_would_change_anything_else_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the safety net under the text surgery: the new file must equal the old one but for
    # the roster and the threshold, or federation.toml is left as it was
    path = init_federation(tmp_path, sites=3)
    text = path.read_text()
    cut = roster_ops._without_site_block
    monkeypatch.setattr(
        roster_ops,
        "_without_site_block",
        lambda p, t, site: cut(p, t, site).replace(
            "\n[[sites]]", "\n[hygiene]\nshuffle = true\n\n[[sites]]", 1
        ),
    )
    with pytest.raises(ConfigError, match="would also change hygiene; not done"):
        revoke_site(tmp_path, "site-1")
    assert path.read_text() == text
    assert not path.with_name("federation.toml.new").exists()


def test_init_creates_every_sites_audit_log_empty(tmp_path: Path) -> None:
    init_federation(tmp_path, sites=3)
    for k in range(3):
        log = tmp_path / "sites" / f"site-{k}.audit.jsonl"
        assert log.read_bytes() == b""
        assert verify_audit_log(log).ok


def test_a_rotation_before_any_round_leaves_the_empty_log_and_says_so(tmp_path: Path) -> None:
    # An empty log here may be init's copy of a site that keeps its own log elsewhere:
    # nothing is recorded in it (the site's real log would never be), and the operator
    # is told how the site records the rotation.
    init_federation(tmp_path, sites=3)
    change = rotate_site_key(tmp_path, "site-0")
    assert "no rounds in an audit log of site-0" in change.detail
    log_path = tmp_path / "sites" / "site-0.audit.jsonl"
    assert log_path.read_bytes() == b""
    assert not (tmp_path / "sites" / "site-0.key.previous").exists()
    load_site(tmp_path / "sites" / "site-0.toml")  # the new key, and the (empty) log, load


def _files(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_revoke_never_removes_another_site_than_asked(tmp_path: Path) -> None:
    # A comment in site-2's entry holds U+2028 (a line break to str.splitlines, not to
    # TOML) before a name line of site-1, and site-1's own name line has a comment: the
    # text surgery must not take site-2 out instead (refused, nothing changed).
    path = init_federation(tmp_path, sites=3)
    text = path.read_text()
    text = text.replace('name = "site-1"', 'name = "site-1" # the lab', 1)
    text = text.replace('name = "site-2"', 'name = "site-2"\n# moved\u2028name = "site-1"', 1)
    path.write_text(text)
    before = _files(tmp_path)
    with pytest.raises(ConfigError):
        revoke_site(tmp_path, "site-1")
    assert _files(tmp_path) == before


def test_rotate_changes_nothing_when_only_a_comment_would_change(tmp_path: Path) -> None:
    # The roster key in upper-case hex and the lower-case key in a comment: replacing the
    # comment is not a rotation; refused, no key file replaced or left behind.
    path = init_federation(tmp_path, sites=3)
    federation = load_federation(path)
    key = federation.roster.entries[1].verify_key.hex()
    text = path.read_text().replace(key, key.upper(), 1) + f"\n# site-1 was {key}\n"
    path.write_text(text)
    site = tmp_path / "sites" / "site-1.toml"
    _rounds_logged(site, rounds=1)
    before = _files(tmp_path)
    with pytest.raises(ConfigError, match="not the intended one"):
        rotate_site_key(tmp_path, "site-1")
    assert _files(tmp_path) == before


def test_a_failed_rotation_leaves_no_key_file_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    init_federation(tmp_path, sites=3)
    _rounds_logged(tmp_path / "sites" / "site-1.toml", rounds=1)
    before = _files(tmp_path)

    def fails(*_: object) -> None:
        raise ConfigError(tmp_path / "broker" / "passwd", None, "mosquitto_passwd -U failed")

    monkeypatch.setattr(roster_ops, "_write_password_file", fails)
    with pytest.raises(ConfigError, match="mosquitto_passwd"):
        rotate_site_key(tmp_path, "site-1")
    assert _files(tmp_path) == before


def test_a_log_that_grew_during_the_rotation_is_reported_with_the_way_to_finish(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The roster has changed by then: the rotation is not undone, the operator is told
    # how to record it, and the old key is kept for that.
    init_federation(tmp_path, sites=3)
    site = tmp_path / "sites" / "site-1.toml"
    _rounds_logged(site, rounds=1)

    def grown(self: AuditLog, _key: object) -> str:
        raise AuditError(f"{self.path}: changed by someone else since it was opened")

    monkeypatch.setattr(AuditLog, "rotate_key", grown)
    change = rotate_site_key(tmp_path, "site-1")
    previous = tmp_path / "sites" / "site-1.key.previous"
    assert "the rotation could NOT be recorded" in change.detail
    assert f"mpc-agg audit rotate --config {site} --previous-key {previous}" in change.detail
    assert previous.is_file()


def test_revoking_a_second_site_of_the_same_name_keeps_the_first_ones_files(
    tmp_path: Path,
) -> None:
    # an earlier site-1 was revoked (its files are in sites/revoked): revoking the current
    # site-1 must not overwrite its audit trail and key; refused before anything changes
    init_federation(tmp_path, sites=4)
    revoked = tmp_path / "sites" / "revoked"
    revoked.mkdir()
    (revoked / "site-1.audit.jsonl").write_text("the earlier site-1's history\n")
    before = _files(tmp_path)
    with pytest.raises(ValueError, match=r"already holds site-1\.audit\.jsonl of an earlier"):
        revoke_site(tmp_path, "site-1")
    assert _files(tmp_path) == before
