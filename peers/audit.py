r"""Hash-chained JSON-lines audit log, one per site (DESIGN §1 item 4, §9).

Each line is one canonical JSON object (``json.dumps(sort_keys=True,
separators=(",", ":"), ensure_ascii=False)``, UTF-8, one line each)::

    {"prev":"<hex>","record":{...},"seq":k,"sig":"<hex>","time":"2025-01-01T12:00:00.000000Z"}

``seq`` is the 1-based line number; ``prev`` is the hex SHA-256 of the previous line's
bytes (without its newline), 64 zeros on line 1; ``time`` is UTC. The digest of the
last line — returned by :meth:`AuditLog.append`, see :attr:`AuditLog.head` — commits to
the whole log.

``sig`` (present when the log is written with the site's signing key, as ``PeerNode``
does) is an Ed25519 signature by the site's long-term key over ``"mpc-agg/audit/v1\0"``
and the canonical entry without ``sig``. Checked against the roster key
(``verify_audit_log(path, verify_key=…)``, ``mpc-agg audit verify --federation``), it
makes every line, the last one included, impossible to edit or forge without that key.
Only dropping whole lines at the end still needs an anchor.

A site's key can change (``mpc-agg roster rotate``). :meth:`AuditLog.rotate_key` then
appends a *rotation line*, whose record is ``{"audit": "signing-key-rotated",
"previous_key": "<hex>", "key": "<hex>"}``, signed by the **new** key: checked against the
current roster key, it authenticates the previous key, which must have signed every line
before it (and so on back through earlier rotations). Whoever lacks the current key
cannot change which earlier key the log names, nor any line signed under it.

What the chain alone proves: any edited, removed, reordered or inserted line before the last
one, and a truncated last line, is detected by :func:`verify_audit_log` without any
outside information. Changing the *last* line into another valid line, or dropping
whole lines at the end, can only be detected against an anchor — a ``(seq, digest)``
the site published or handed to an auditor earlier (``verify_audit_log(path,
anchor=…)``). Nor does the chain stop someone who rewrites the file and recomputes every
digest after their edit; the anchor does.

What callers may record (and nothing else): protocol name and version, round id,
public parameters (threshold, vector length, encoding, deadlines), the roster digest,
participants, dropped and excluded peers with reasons, commitment and result digests,
timings, byte counts and privacy spent. Never secrets or private data: no shares, seeds,
keys, passwords, masks, masked vectors, raw updates or aggregates. :meth:`AuditLog.append`
refuses records with an obviously secret key name (``password``, ``seed``, ``share``,
…) as a last line of defence; it is not a substitute for the rule.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from mpc_agg.crypto import SigningKey, VerifyKey
from mpc_agg.errors import MpcAggError, SignatureError

#: ``prev`` of the first line.
GENESIS: Final = "0" * 64
_FIELDS: Final = frozenset({"seq", "prev", "time", "record"})
_SIGNED_FIELDS: Final = _FIELDS | {"sig"}
_SIGNING_DOMAIN: Final = b"mpc-agg/audit/v1\x00"
_HEX_SIGNATURE: Final = re.compile(r"[0-9a-f]{128}")
_HEX_DIGEST: Final = re.compile(r"[0-9a-f]{64}")
_TIME: Final = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
#: ``record["audit"]`` of a rotation line (:meth:`AuditLog.rotate_key`).
ROTATION: Final = "signing-key-rotated"
#: Key names that never belong in an audit record (compared case-insensitively).
_SECRET_KEYS: Final = frozenset(
    {
        "password",
        "secret",
        "private_key",
        "signing_key",
        "seed",
        "mask_seed",
        "self_mask_seed",
        "share",
        "shares",
    }
)


class AuditError(MpcAggError):
    """Cannot append: the log is broken or changed underneath us, or the record is invalid."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditReport:
    """Outcome of :func:`verify_audit_log`.

    ``lines`` counts complete, verified lines before the first problem (all of them when
    ``ok``). ``line_number`` is the 1-based number of the first bad line.
    """

    lines: int
    ok: bool
    problem: str | None = None
    line_number: int | None = None


def _canonical(obj: Any) -> bytes:
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def _digest(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


def _utc_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _check_line(
    number: int,
    line: bytes,
    prev: str | None,
    verify_key: VerifyKey | None = None,
) -> str | None:
    """Problem with line ``number`` on its own and against ``prev``; ``None`` when fine.

    ``prev`` ``None``: the line alone, not its link to the previous one.
    """
    try:
        entry = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):  # RecursionError: deep nesting
        return "not valid UTF-8 JSON"
    if not isinstance(entry, dict) or set(entry) not in (_FIELDS, _SIGNED_FIELDS):
        return "not an audit entry (expected exactly the keys prev, record, seq, time[, sig])"
    try:
        canonical = _canonical(entry)
    except (ValueError, RecursionError):
        return "not canonical JSON"
    if canonical != line:
        return "not in canonical form (changed after it was written)"
    seq = entry["seq"]
    if type(seq) is not int or seq != number:
        return f"seq is {seq!r}, expected {number}: a line is missing, inserted or out of order"
    if not isinstance(entry["prev"], str) or not _HEX_DIGEST.fullmatch(entry["prev"]):
        return "prev is not a hex SHA-256 digest"
    if not isinstance(entry["time"], str) or not _TIME.fullmatch(entry["time"]):
        return "time is not a UTC timestamp"
    if not isinstance(entry["record"], dict):
        return "record is not an object"
    if prev is not None and entry["prev"] != prev:
        return "prev does not match the digest of the previous line"
    if verify_key is not None:
        signature = entry.pop("sig", None)
        if not isinstance(signature, str) or not _HEX_SIGNATURE.fullmatch(signature):
            return "not signed (a signed log was expected)"
        try:
            verify_key.verify(bytes.fromhex(signature), _SIGNING_DOMAIN + _canonical(entry))
        except SignatureError:
            return (
                "signature does not verify under the site's key (edited or forged; or "
                "signed by an earlier key of the site, without a rotation line: see "
                "`mpc-agg audit rotate`)"
            )
    return None


def _rotated_from(line: bytes) -> VerifyKey | None:
    """The previous key a rotation line names; ``None`` for any other (or unreadable) line."""
    try:
        record = json.loads(line.decode("utf-8")).get("record")
        if not isinstance(record, dict) or record.get("audit") != ROTATION:
            return None
        previous = record.get("previous_key")
        if not isinstance(previous, str) or not _HEX_DIGEST.fullmatch(previous):
            return None
        return VerifyKey(bytes.fromhex(previous))
    except (UnicodeDecodeError, ValueError, AttributeError, RecursionError, MpcAggError):
        return None


def _key_schedule(lines: list[bytes], verify_key: VerifyKey | None) -> list[VerifyKey | None]:
    """The key each line's signature is checked under, from the last line back.

    ``verify_key`` for the lines after the last rotation line and for that line itself;
    the key it names for the lines before it, but only if the rotation line's signature
    verifies under the key after it (so an earlier key is trusted only through an
    authentic line); and so on back. Lines before a rotation line that does not verify
    have no trusted key (``None``): only their form and links are checked, and the
    rotation line itself then fails its own signature, so the report names the first line
    that is actually damaged.
    """
    keys: list[VerifyKey | None] = []
    current = verify_key
    for number in range(len(lines), 0, -1):
        line = lines[number - 1]
        keys.append(current)
        previous = _rotated_from(line) if current is not None else None
        if previous is not None:
            signed = _check_line(number, line, None, current) is None
            current = previous if signed else None
    keys.reverse()
    return keys


def verify_audit_log(
    path: Path | str,
    *,
    anchor: tuple[int, str] | None = None,
    verify_key: VerifyKey | None = None,
) -> AuditReport:
    """Check the whole chain of ``path``; report the first bad line.

    A missing file is an empty, valid log. ``anchor = (seq, digest)`` additionally
    requires line ``seq`` to exist and to hash to ``digest`` (see the module docstring).
    With ``verify_key`` (the site's roster key) every line must carry a valid signature,
    which also protects the last line: by ``verify_key``, or, before a rotation line, by
    the previous key that line names (see the module docstring).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        data = b""
    lines = data.split(b"\n")
    truncated = lines.pop()  # b"" when the file ends with a newline (or is empty)
    digests: list[str] = []
    prev = GENESIS
    keys = _key_schedule(lines, verify_key)
    for number, line in enumerate(lines, start=1):
        problem = _check_line(number, line, prev, keys[number - 1])
        if problem is not None:
            bad = number
            if problem.startswith("prev does not match") and number > 1:
                # Line number-1 no longer hashes to what this line committed to: either
                # it was changed (then this is its only broken link) or this line's prev
                # was (then this line also breaks the link to the next one).
                nxt = lines[number] if number < len(lines) else None
                if (
                    nxt is not None
                    and _check_line(number + 1, nxt, _digest(line), keys[number]) is None
                ):
                    bad = number - 1
                    problem = f"changed after line {number} committed to its digest"
                elif nxt is None:
                    bad = number - 1
                    problem = (
                        f"does not match the digest line {number} records for it "
                        f"(line {bad} or the prev of line {number} was changed)"
                    )
            return AuditReport(
                lines=bad - 1, ok=False, problem=f"line {bad}: {problem}", line_number=bad
            )
        digests.append(_digest(line))
        prev = digests[-1]
    if truncated:
        number = len(lines) + 1
        return AuditReport(
            lines=len(lines),
            ok=False,
            problem=f"line {number}: truncated (no final newline; an interrupted write?)",
            line_number=number,
        )
    if anchor is not None:
        seq, digest = anchor
        if seq > len(digests):
            return AuditReport(
                lines=len(digests),
                ok=False,
                problem=f"line {len(digests) + 1}: missing; the anchor names line {seq}",
                line_number=len(digests) + 1,
            )
        if seq >= 1 and digests[seq - 1] != digest:
            return AuditReport(
                lines=seq - 1,
                ok=False,
                problem=f"line {seq}: does not match the anchored digest",
                line_number=seq,
            )
    return AuditReport(lines=len(digests), ok=True)


def _check_record(record: Mapping[str, Any], where: str = "record") -> None:
    for key, value in record.items():
        if not isinstance(key, str):
            raise AuditError(f"{where}: keys must be strings, got {key!r}")
        if key.lower() in _SECRET_KEYS:
            raise AuditError(f"{where}.{key}: secrets and private data never go in the audit log")
        if isinstance(value, Mapping):
            _check_record(value, f"{where}.{key}")
        elif isinstance(value, list | tuple):
            for i, item in enumerate(value):
                if isinstance(item, Mapping):
                    _check_record(item, f"{where}.{key}[{i}]")


class AuditLog:
    """Appends hash-chained entries to one site's audit log (see the module docstring).

    Opening verifies the existing file and resumes its chain; a broken file raises
    :class:`AuditError` and is never appended to. Each append is one ``write`` to a file
    opened with ``O_APPEND``, followed by ``fsync``.
    """

    __slots__ = ("_head", "_lines", "_path", "_signing_key", "_size")

    def __init__(self, path: Path | str, *, signing_key: SigningKey | None = None) -> None:
        self._path = Path(path)
        self._signing_key = signing_key
        verify_key = VerifyKey(signing_key.public_bytes()) if signing_key is not None else None
        report = verify_audit_log(self._path, verify_key=verify_key)
        if not report.ok:
            raise AuditError(
                f"{self._path}: refusing to append to a broken audit log: {report.problem}"
            )
        data = self._path.read_bytes() if self._path.exists() else b""
        self._size = len(data)
        self._lines = report.lines
        last = data[:-1].rsplit(b"\n", 1)[-1] if data else None
        self._head = _digest(last) if last is not None else GENESIS

    @property
    def path(self) -> Path:
        """The log file."""
        return self._path

    @property
    def lines(self) -> int:
        """Number of entries in the log."""
        return self._lines

    def last_round(self, federation: str) -> int:
        """Largest ``round`` recorded for ``federation`` (0 if none): round ids never repeat."""
        rounds = [r["round"] for r in self.records(federation) if type(r.get("round")) is int]
        return max(rounds, default=0)

    def records(self, federation: str) -> list[dict[str, Any]]:
        """Every record of ``federation``, oldest first (read back, e.g. the ε already spent)."""
        found: list[dict[str, Any]] = []
        if self._path.exists():
            for line in self._path.read_bytes().splitlines():
                record = json.loads(line).get("record", {})
                if isinstance(record, dict) and record.get("federation") == federation:
                    found.append(record)
        return found

    @property
    def head(self) -> tuple[int, str]:
        """``(seq, digest)`` of the last line — an anchor for :func:`verify_audit_log`."""
        return (self._lines, self._head)

    def append(self, record: Mapping[str, Any]) -> str:
        """Append ``record`` as the next entry, fsync, and return the new line's digest."""
        _check_record(record)
        if record.get("audit") == ROTATION:
            raise AuditError("a rotation line is written by rotate_key(), not append()")
        return self._append(record, self._signing_key)

    def rotate_key(self, new_key: SigningKey) -> str:
        """Record that the site signs with ``new_key`` from now on; return the line's digest.

        The rotation line is signed by ``new_key`` and names the key the log was opened
        with, which signed (and :meth:`__init__` verified) every line before it; later
        lines are signed by ``new_key``. Raises :class:`AuditError` for a log opened
        without a key, or for ``new_key`` equal to it.
        """
        old_key = self._signing_key
        if old_key is None:
            raise AuditError("an unsigned audit log has no key to rotate")
        if new_key.public_bytes() == old_key.public_bytes():
            raise AuditError("the new signing key is the key the log is already signed with")
        record = {
            "audit": ROTATION,
            "previous_key": old_key.public_bytes().hex(),
            "key": new_key.public_bytes().hex(),
        }
        digest = self._append(record, new_key)
        self._signing_key = new_key
        return digest

    def _append(self, record: Mapping[str, Any], signing_key: SigningKey | None) -> str:
        entry = {
            "seq": self._lines + 1,
            "prev": self._head,
            "time": _utc_now(),
            "record": dict(record),
        }
        try:
            line = _canonical(entry)
        except (TypeError, ValueError) as exc:
            raise AuditError(f"record is not JSON-serialisable: {exc}") from None
        if signing_key is not None:
            entry["sig"] = signing_key.sign(_SIGNING_DOMAIN + line).hex()
            line = _canonical(entry)
        created = not self._path.exists()
        fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            if os.fstat(fd).st_size != self._size:
                raise AuditError(
                    f"{self._path}: changed by someone else since it was opened; not appending"
                )
            data = memoryview(line + b"\n")
            while data:
                data = data[os.write(fd, data) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            _fsync_directory(self._path.parent)
        self._size += len(line) + 1
        self._lines += 1
        self._head = _digest(line)
        return self._head

    def __repr__(self) -> str:
        return f"AuditLog({str(self._path)!r}, lines={self._lines})"


def _fsync_directory(directory: Path) -> None:
    """Make a newly created file's directory entry durable (POSIX; a no-op elsewhere)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
