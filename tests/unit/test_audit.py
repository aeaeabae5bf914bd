"""Hash-chained audit log (peers/audit.py): every edit, removal, reorder, insert is found."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from mpc_agg.crypto import SigningKey, VerifyKey
from mpc_agg.randomness import DeterministicRandomSource
from peers.audit import GENESIS, AuditError, AuditLog, AuditReport, verify_audit_log

N_LINES = 6


def _record(k: int) -> dict[str, object]:
    return {
        "round": k,
        "event": "round_finished",
        "participants": ["site-0", "site-1", "site-2"],
        "excluded": {"site-3": "dropped in MASKED_INPUT"},
        "result_digest": hashlib.sha256(bytes([k])).hexdigest(),
        "note": "café ✓",  # non-ASCII stays as UTF-8 (ensure_ascii=False)
    }


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    path = tmp_path / "site-0.audit.jsonl"
    log = AuditLog(path)
    for k in range(1, N_LINES + 1):
        log.append(_record(k))
    return path


def _lines(path: Path) -> list[bytes]:
    data = path.read_bytes()
    assert data.endswith(b"\n")
    return data[:-1].split(b"\n")


def _write_lines(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(line + b"\n" for line in lines))


def _canonical(entry: object) -> bytes:
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _bad(path: Path, line: int, fragment: str = "") -> AuditReport:
    report = verify_audit_log(path)
    assert not report.ok
    assert report.line_number == line, report.problem
    assert report.problem is not None
    assert report.problem.startswith(f"line {line}: ")
    assert fragment in report.problem
    assert report.lines == line - 1
    return report


# --------------------------------------------------------------------------- format


def test_append_writes_canonical_chained_lines(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    assert log.head == (0, GENESIS)
    digests = [log.append(_record(k)) for k in (1, 2, 3)]
    lines = _lines(path)
    assert len(lines) == 3
    prev = GENESIS
    for k, (line, digest) in enumerate(zip(lines, digests, strict=True), start=1):
        entry = json.loads(line)
        assert entry["seq"] == k
        assert entry["prev"] == prev
        assert entry["record"] == _record(k)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", entry["time"])
        expected = json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        assert line == expected.encode("utf-8")
        assert "café ✓".encode() in line
        assert digest == hashlib.sha256(line).hexdigest()
        prev = digest
    assert log.head == (3, digests[-1])
    assert log.lines == 3
    assert verify_audit_log(path) == AuditReport(lines=3, ok=True)


def test_missing_and_empty_logs_are_valid(tmp_path: Path) -> None:
    assert verify_audit_log(tmp_path / "absent.jsonl") == AuditReport(lines=0, ok=True)
    (tmp_path / "empty.jsonl").write_bytes(b"")
    assert verify_audit_log(tmp_path / "empty.jsonl") == AuditReport(lines=0, ok=True)
    assert AuditLog(tmp_path / "empty.jsonl").head == (0, GENESIS)


def test_verify_accepts_a_generated_log(log_path: Path) -> None:
    assert verify_audit_log(log_path) == AuditReport(lines=N_LINES, ok=True)


# --------------------------------------------------------------------------- tampering


@pytest.mark.parametrize("k", range(1, N_LINES))
def test_edited_value_names_the_edited_line(log_path: Path, k: int) -> None:
    lines = _lines(log_path)
    # Keep the line valid canonical JSON: only the chain can notice.
    lines[k - 1] = lines[k - 1].replace(b'"round_finished"', b'"round_finishet"')
    _write_lines(log_path, lines)
    _bad(log_path, k, "changed")


@pytest.mark.parametrize("k", range(1, N_LINES + 1))
def test_edited_byte_that_breaks_the_form_names_the_line(log_path: Path, k: int) -> None:
    lines = _lines(log_path)
    lines[k - 1] = lines[k - 1].replace(b'"seq":', b'"seq": ')  # not canonical any more
    _write_lines(log_path, lines)
    _bad(log_path, k, "canonical")


@pytest.mark.parametrize("k", range(1, N_LINES))
def test_edited_prev_names_the_line_holding_it(log_path: Path, k: int) -> None:
    lines = _lines(log_path)
    entry = json.loads(lines[k - 1])
    entry["prev"] = "f" + entry["prev"][1:] if entry["prev"][0] != "f" else "e" + entry["prev"][1:]
    lines[k - 1] = _canonical(entry)
    _write_lines(log_path, lines)
    _bad(log_path, k, "prev")


@pytest.mark.parametrize(
    ("k", "replacement"), [(3, b'"seq":33'), (4, b'"seq":"4"'), (2, b'"seq":2.0')]
)
def test_edited_seq_is_found(log_path: Path, k: int, replacement: bytes) -> None:
    lines = _lines(log_path)
    lines[k - 1] = lines[k - 1].replace(f'"seq":{k}'.encode(), replacement)
    _write_lines(log_path, lines)
    _bad(log_path, k)


def test_last_line_edit_is_found_against_an_anchor(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    for k in range(1, 4):
        log.append(_record(k))
    anchor = log.head
    assert verify_audit_log(path, anchor=anchor).ok
    lines = _lines(path)
    lines[2] = lines[2].replace(b'"round":3', b'"round":4')
    _write_lines(path, lines)
    # Without the anchor the last line's change is invisible (documented limitation) ...
    assert verify_audit_log(path).ok
    # ... with it, line 3 is named.
    report = verify_audit_log(path, anchor=anchor)
    assert (report.ok, report.line_number) == (False, 3)
    assert report.problem == "line 3: does not match the anchored digest"


@pytest.mark.parametrize("k", range(1, N_LINES))
def test_removed_line_is_named(log_path: Path, k: int) -> None:
    lines = _lines(log_path)
    del lines[k - 1]
    _write_lines(log_path, lines)
    _bad(log_path, k, f"seq is {k + 1}, expected {k}")


def test_removed_tail_is_found_against_an_anchor(log_path: Path) -> None:
    anchor = AuditLog(log_path).head
    lines = _lines(log_path)
    _write_lines(log_path, lines[:-2])
    assert verify_audit_log(log_path).ok  # a shorter log is a valid log on its own
    report = verify_audit_log(log_path, anchor=anchor)
    assert (report.ok, report.line_number, report.lines) == (False, N_LINES - 1, N_LINES - 2)
    assert report.problem == f"line {N_LINES - 1}: missing; the anchor names line {N_LINES}"


def test_anchor_on_an_earlier_line_still_verifies_a_grown_log(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    log.append(_record(1))
    anchor = log.head
    log.append(_record(2))
    assert verify_audit_log(tmp_path / "audit.jsonl", anchor=anchor).ok
    assert not verify_audit_log(tmp_path / "audit.jsonl", anchor=(1, "0" * 64)).ok


@pytest.mark.parametrize("k", range(1, N_LINES))
def test_swapped_lines_are_named(log_path: Path, k: int) -> None:
    lines = _lines(log_path)
    lines[k - 1], lines[k] = lines[k], lines[k - 1]
    _write_lines(log_path, lines)
    _bad(log_path, k, "out of order")


@pytest.mark.parametrize("k", range(1, N_LINES + 2))
def test_inserted_duplicate_line_is_named(log_path: Path, k: int) -> None:
    lines = _lines(log_path)
    lines.insert(k - 1, lines[1] if k == 1 else lines[0])  # a copy of another line
    _write_lines(log_path, lines)
    _bad(log_path, k, "seq is")


def test_forged_line_with_the_right_seq_is_found(log_path: Path) -> None:
    lines = _lines(log_path)
    forged = json.loads(lines[3])
    forged["record"] = {"event": "nothing happened"}
    forged["prev"] = hashlib.sha256(lines[2]).hexdigest()
    # A self-consistent line 4 after line 3, and every later seq renumbered to fit.
    lines.insert(3, _canonical(forged))
    for i in range(4, len(lines)):
        entry = json.loads(lines[i])
        entry["seq"] += 1
        lines[i] = _canonical(entry)
    _write_lines(log_path, lines)
    report = verify_audit_log(log_path)
    assert not report.ok
    # Line 4 is consistent with line 3; the break shows where the old line 4 follows it.
    assert report.line_number == 5
    assert report.problem == "line 5: prev does not match the digest of the previous line"


@pytest.mark.parametrize("cut", [1, 10, 40])
def test_truncated_tail_is_named(log_path: Path, cut: int) -> None:
    data = log_path.read_bytes()
    log_path.write_bytes(data[:-cut])
    _bad(log_path, N_LINES, "truncated")


def test_blank_line_is_named(log_path: Path) -> None:
    lines = _lines(log_path)
    lines.insert(2, b"")
    _write_lines(log_path, lines)
    _bad(log_path, 3, "not valid UTF-8 JSON")


def test_invalid_utf8_is_named(log_path: Path) -> None:
    lines = _lines(log_path)
    lines[1] = lines[1].replace("é".encode(), b"\xff")
    _write_lines(log_path, lines)
    _bad(log_path, 2, "not valid UTF-8 JSON")


# --------------------------------------------------------------------------- resume / refuse


def test_resume_appending_after_reopen(log_path: Path) -> None:
    last = hashlib.sha256(_lines(log_path)[-1]).hexdigest()
    log = AuditLog(log_path)
    assert log.head == (N_LINES, last)
    digest = log.append({"event": "resumed"})
    entry = json.loads(_lines(log_path)[-1])
    assert (entry["seq"], entry["prev"], entry["record"]) == (
        N_LINES + 1,
        last,
        {"event": "resumed"},
    )
    assert digest == hashlib.sha256(_lines(log_path)[-1]).hexdigest()
    assert verify_audit_log(log_path) == AuditReport(lines=N_LINES + 1, ok=True)


def test_refuses_to_open_a_broken_log(log_path: Path) -> None:
    lines = _lines(log_path)
    del lines[1]
    _write_lines(log_path, lines)
    before = log_path.read_bytes()
    with pytest.raises(AuditError, match="refusing to append to a broken audit log: line 2: "):
        AuditLog(log_path)
    assert log_path.read_bytes() == before


def test_refuses_to_append_after_a_truncated_write(log_path: Path) -> None:
    log_path.write_bytes(log_path.read_bytes()[:-5])
    with pytest.raises(AuditError, match=f"line {N_LINES}: truncated"):
        AuditLog(log_path)


def test_refuses_to_append_when_changed_underneath(log_path: Path) -> None:
    log = AuditLog(log_path)
    other = AuditLog(log_path)
    other.append({"event": "from another writer"})
    before = log_path.read_bytes()
    with pytest.raises(AuditError, match="changed by someone else"):
        log.append({"event": "stale"})
    assert log_path.read_bytes() == before
    assert verify_audit_log(log_path).ok


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"password": "hunter2"}, "record.password: secrets"),
        ({"round": 1, "peer": {"mask_seed": "00"}}, "record.peer.mask_seed: secrets"),
        ({"items": [{"ok": 1}, {"Share": 5}]}, r"record.items\[1\].Share: secrets"),
        ({"value": float("nan")}, "not JSON-serialisable"),
        ({"value": b"bytes"}, "not JSON-serialisable"),
        ({1: "int key"}, "keys must be strings"),
    ],
)
def test_rejected_records_leave_the_log_untouched(
    log_path: Path, record: dict[object, object], message: str
) -> None:
    log = AuditLog(log_path)
    before = log_path.read_bytes()
    with pytest.raises(AuditError, match=message):
        log.append(record)  # type: ignore[arg-type]
    assert log_path.read_bytes() == before
    assert log.head == (N_LINES, hashlib.sha256(_lines(log_path)[-1]).hexdigest())
    log.append({"event": "still fine"})
    assert verify_audit_log(log_path).ok


def test_every_append_is_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os  # noqa: PLC0415

    synced: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    log = AuditLog(tmp_path / "audit.jsonl")
    log.append({"event": "one"})  # file + its new directory entry
    assert len(synced) == 2
    log.append({"event": "two"})
    assert len(synced) == 3


# --------------------------------------------------------------------------- signed logs


def _signed_log(tmp_path: Path, lines: int = 3) -> tuple[Path, SigningKey]:
    key = SigningKey.generate(DeterministicRandomSource("audit-signer"))
    path = tmp_path / "signed.jsonl"
    log = AuditLog(path, signing_key=key)
    for i in range(lines):
        log.append({"round": i + 1, "outcome": "aggregate"})
    return path, key


def test_signed_log_verifies_with_the_site_key(tmp_path: Path) -> None:
    path, key = _signed_log(tmp_path)
    report = verify_audit_log(path, verify_key=VerifyKey(key.public_bytes()))
    assert report.ok
    assert report.lines == 3


def test_editing_the_last_signed_line_is_detected(tmp_path: Path) -> None:
    path, key = _signed_log(tmp_path)
    path.write_text(path.read_text().replace('"round":3', '"round":4'))
    assert verify_audit_log(path).ok  # the bare chain cannot see it …
    report = verify_audit_log(path, verify_key=VerifyKey(key.public_bytes()))
    assert not report.ok  # … the signature can
    assert report.line_number == 3
    assert report.problem is not None
    assert "signature does not verify" in report.problem


def test_a_signed_log_checked_with_another_key_fails_on_line_one(tmp_path: Path) -> None:
    path, _ = _signed_log(tmp_path)
    other = SigningKey.generate(DeterministicRandomSource("someone-else"))
    report = verify_audit_log(path, verify_key=VerifyKey(other.public_bytes()))
    assert not report.ok
    assert report.line_number == 1


def test_an_unsigned_log_fails_when_signatures_are_required(tmp_path: Path) -> None:
    path = tmp_path / "plain.jsonl"
    AuditLog(path).append({"round": 1})
    key = SigningKey.generate(DeterministicRandomSource("audit-signer"))
    report = verify_audit_log(path, verify_key=VerifyKey(key.public_bytes()))
    assert not report.ok
    assert report.problem is not None
    assert "not signed" in report.problem


def test_reopening_a_signed_log_resumes_signing(tmp_path: Path) -> None:
    path, key = _signed_log(tmp_path, lines=2)
    AuditLog(path, signing_key=key).append({"round": 3})
    assert verify_audit_log(path, verify_key=VerifyKey(key.public_bytes())).lines == 3


# --------------------------------------------------------------------------- key rotation


def _key(name: str) -> SigningKey:
    return SigningKey.generate(DeterministicRandomSource(name))


def _public(key: SigningKey) -> VerifyKey:
    return VerifyKey(key.public_bytes())


def _rotated_log(tmp_path: Path) -> tuple[Path, SigningKey, SigningKey, SigningKey]:
    """Lines 1-2 under k0, rotation (3), line 4 under k1, rotation (5), line 6 under k2."""
    k0, k1, k2 = _key("k0"), _key("k1"), _key("k2")
    path = tmp_path / "rotated.jsonl"
    log = AuditLog(path, signing_key=k0)
    log.append({"round": 1})
    log.append({"round": 2})
    log.rotate_key(k1)
    log.append({"round": 3})
    AuditLog(path, signing_key=k1).rotate_key(k2)  # reopened under the key in force
    AuditLog(path, signing_key=k2).append({"round": 4})
    return path, k0, k1, k2


def test_a_rotated_log_verifies_under_the_current_key_only(tmp_path: Path) -> None:
    path, k0, k1, k2 = _rotated_log(tmp_path)
    assert verify_audit_log(path, verify_key=_public(k2)) == AuditReport(lines=6, ok=True)
    # an earlier key no longer speaks for the log's end
    for old in (k0, k1):
        report = verify_audit_log(path, verify_key=_public(old))
        assert not report.ok
        assert report.line_number is not None
        assert report.line_number <= 5
    rotation = json.loads(_lines(path)[2])
    assert rotation["record"] == {
        "audit": "signing-key-rotated",
        "previous_key": k0.public_bytes().hex(),
        "key": k1.public_bytes().hex(),
    }
    # every record is still there to read back (round ids, the privacy ledger)
    rounds = [json.loads(line)["record"].get("round") for line in _lines(path)]
    assert rounds == [1, 2, None, 3, None, 4]
    log = AuditLog(path, signing_key=k2)
    log.append({"round": 5})
    assert verify_audit_log(path, verify_key=_public(k2)).lines == 7


def test_a_forged_rotation_line_cannot_bring_in_another_key(tmp_path: Path) -> None:
    # Someone without the current key rewrites the log under a key of their own: the
    # rotation line that would name it has to verify under the roster key, and does not.
    path, _, _, k2 = _rotated_log(tmp_path)
    mallory = _key("mallory")
    forged = tmp_path / "forged.jsonl"
    log = AuditLog(forged, signing_key=mallory)
    for k in range(1, 5):
        log.append({"round": k})
    log.rotate_key(_key("mallory-2"))  # a valid-looking rotation line, wrong signer
    report = verify_audit_log(forged, verify_key=_public(k2))
    assert not report.ok
    assert report.line_number == 5  # the rotation line that would bring Mallory's key in
    assert report.problem is not None
    assert "signature does not verify" in report.problem
    # and re-pointing a genuine rotation line at Mallory's key breaks that line
    lines = _lines(path)
    lines[2] = lines[2].replace(
        json.loads(lines[2])["record"]["previous_key"].encode(),
        mallory.public_bytes().hex().encode(),
    )
    path.write_bytes(b"\n".join(lines) + b"\n")
    report = verify_audit_log(path, verify_key=_public(k2))
    assert not report.ok
    assert report.line_number == 3  # the re-pointed rotation line, not line 1
    assert report.problem is not None
    assert "signature does not verify" in report.problem


def test_a_line_signed_by_the_previous_key_after_the_rotation_is_refused(tmp_path: Path) -> None:
    k0, k1 = _key("k0"), _key("k1")
    path = tmp_path / "late.jsonl"
    log = AuditLog(path, signing_key=k0)
    log.append({"round": 1})
    log.rotate_key(k1)
    # the old key writes on, as if nothing had happened
    stale = AuditLog.__new__(AuditLog)
    for slot in AuditLog.__slots__:
        setattr(stale, slot, getattr(log, slot))
    stale._signing_key = k0
    stale.append({"round": 2})
    report = verify_audit_log(path, verify_key=_public(k1))
    assert not report.ok
    assert report.line_number == 3
    with pytest.raises(AuditError, match="earlier key of the site"):
        AuditLog(path, signing_key=k1)


def test_rotation_needs_a_signed_log_and_a_new_key_and_is_not_an_ordinary_record(
    tmp_path: Path,
) -> None:
    k0 = _key("k0")
    with pytest.raises(AuditError, match="unsigned audit log"):
        AuditLog(tmp_path / "plain.jsonl").rotate_key(k0)
    log = AuditLog(tmp_path / "signed.jsonl", signing_key=k0)
    with pytest.raises(AuditError, match="already signed with"):
        log.rotate_key(_key("k0"))
    with pytest.raises(AuditError, match="rotate_key"):
        log.append({"audit": "signing-key-rotated", "previous_key": "00" * 32})
    assert log.lines == 0


def test_a_deeply_nested_line_is_reported_not_a_crash(log_path: Path) -> None:
    with log_path.open("ab") as handle:
        handle.write(b"[" * 100_000 + b"]" * 100_000 + b"\n")
    report = verify_audit_log(log_path)
    assert not report.ok
    assert report.line_number == N_LINES + 1
    assert report.problem is not None
    assert "not valid UTF-8 JSON" in report.problem


@pytest.mark.parametrize("depth", [985, 990, 995])
def test_a_line_nested_just_below_the_parser_limit_is_reported(log_path: Path, depth: int) -> None:
    # json.loads takes it, the canonical re-encoding does not: still a report, not a crash
    record = "[" * depth + "]" * depth
    line = '{"prev":"' + "0" * 64 + '","record":' + '{"x":' + record + '},"seq":7,"time":"x"}'
    with log_path.open("ab") as handle:
        handle.write(line.encode() + b"\n")
    report = verify_audit_log(log_path)
    assert not report.ok
    assert report.line_number == N_LINES + 1


def test_damage_before_a_rotation_is_named_where_it_is(tmp_path: Path) -> None:
    path, _, _, k2 = _rotated_log(tmp_path)
    lines = _lines(path)
    del lines[1]  # line 2 (signed by k0) removed
    path.write_bytes(b"\n".join(lines) + b"\n")
    report = verify_audit_log(path, verify_key=_public(k2))
    assert not report.ok
    assert report.line_number in (1, 2)  # the broken link, not a signature on line 1
    assert report.problem is not None
    assert "signature" not in report.problem
