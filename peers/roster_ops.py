"""Key management on a federation made by ``mpc-agg init``: rotate a site's key, revoke a site.

Both change the roster, so both change the roster digest every envelope is bound to (SPEC
§4 of each protocol): after the operator hands the new ``federation.toml`` to the sites,
no message signed under the old roster — by the old key, or by the revoked site — is
accepted by anyone. The broker's credentials follow: a rotated site gets a new broker
password, a revoked site loses its account and its ACL entry. Mosquitto reads its
password and ACL files again on ``SIGHUP`` (``kill -HUP``), which the operator sends
afterwards.

The files of a revoked site move to ``sites/revoked/`` (nothing usable stays in place).
``federation.toml`` is replaced atomically (written beside, then renamed), and only
after the new roster loads.

A rotated site's audit log, when it is in the federation directory (``sites/``, where
``mpc-agg init`` puts it), gets a rotation line (:meth:`peers.audit.AuditLog.rotate_key`)
so that its earlier lines still verify against the new roster and the site keeps its
round ids and privacy ledger. The old key stays in ``sites/<site>.key.previous`` until
that line is written. A site that keeps its log elsewhere records the rotation itself
with ``mpc-agg audit rotate --previous-key``.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from mpc_agg.crypto import SigningKey
from mpc_agg.randomness import SystemRandomSource
from peers.audit import AuditError, AuditLog
from peers.config import (
    ConfigError,
    FederationConfig,
    load_federation,
    load_signing_key,
    load_site,
)
from peers.init import _acl, _write, _write_password_file
from protocols.common import RosterEntry
from protocols.robust.params import default_threshold as robust_default_threshold
from protocols.secagg.machine import default_threshold as secagg_default_threshold


@dataclass(frozen=True, slots=True)
class RosterChange:
    """What an operation did, for the operator's log."""

    federation: FederationConfig
    old_digest: str
    new_digest: str
    detail: str


def _load(directory: Path, site: str) -> tuple[Path, FederationConfig]:
    path = Path(directory) / "federation.toml"
    federation = load_federation(path)
    if site not in {entry.name for entry in federation.roster.entries}:
        raise ValueError(f"no site named {site!r} in {path}")
    return path, federation


def _stage(path: Path, text: str, *, secret: bool = False) -> Path:
    """Write ``text`` to a fresh file beside ``path`` (mode 0600 for a secret)."""
    staged = path.with_name(path.name + ".new")
    staged.unlink(missing_ok=True)
    _write(staged, text, secret=secret)
    return staged


def _replace(path: Path, text: str, *, secret: bool = False) -> None:
    """Replace ``path`` with ``text`` atomically (staged beside it, then renamed)."""
    os.replace(_stage(path, text, secret=secret), path)


#: What a roster change may change in ``federation.toml``; anything else changing is a bug.
_ROSTER_FIELDS = frozenset({"roster", "threshold", "path"})


def _replace_atomically(
    path: Path, text: str, before: FederationConfig, roster: Sequence[RosterEntry]
) -> FederationConfig:
    """Stage ``text`` beside ``federation.toml``, check it, then rename it into place.

    The staged file must load, list exactly ``roster`` (the intended change, nothing
    else: not another site removed, not a key changed in a comment only) and equal
    ``before`` in everything but the roster and the threshold (``[dp]``, ``[hygiene]``,
    deadlines, encoding, limits, broker, …): a roster change that lost a table would
    otherwise switch off, say, the DP noise.
    """
    staged = _stage(path, text)
    try:
        after = load_federation(staged)
        if tuple(after.roster.entries) != tuple(roster):
            raise ConfigError(
                path, "sites", "the edited roster is not the intended one; nothing changed"
            )
        changed = [
            name
            for name in FederationConfig.__dataclass_fields__
            if name not in _ROSTER_FIELDS and getattr(after, name) != getattr(before, name)
        ]
        if changed:
            raise ConfigError(
                path, None, f"the roster change would also change {', '.join(changed)}; not done"
            )
    except ConfigError:
        staged.unlink()
        raise
    os.replace(staged, path)
    return load_federation(path)


def _without_site_block(path: Path, text: str, site: str) -> str:
    """``text`` without the one ``[[sites]]`` table of ``site``.

    The table runs from its header to the next table header (``[…]`` or ``[[…]]``) or the
    end of the file: tables after it (an appended ``[dp]``) stay.
    """
    lines = text.split("\n")  # not splitlines: U+2028 in a comment is not a line break
    lines = [line + "\n" for line in lines[:-1]] + ([lines[-1]] if lines[-1] else [])
    headers = [i for i, line in enumerate(lines) if line.lstrip().startswith("[")]
    name = re.compile(rf'^\s*name\s*=\s*"{re.escape(site)}"\s*$')
    blocks = []
    for k, start in enumerate(headers):
        if lines[start].strip() != "[[sites]]":
            continue
        end = headers[k + 1] if k + 1 < len(headers) else len(lines)
        if any(name.match(line) for line in lines[start:end]):
            blocks.append((start, end))
    if len(blocks) != 1:
        raise ConfigError(path, "sites", f"cannot find {site}'s [[sites]] entry exactly once")
    start, end = blocks[0]
    while start > 0 and not lines[start - 1].strip():  # the blank line before it, too
        start -= 1
    return "".join(lines[:start] + lines[end:])


def _passwd_without(passwd: Path, site: str) -> list[str]:
    lines = passwd.read_text().splitlines() if passwd.exists() else []
    return [line for line in lines if not line.startswith(f"{site}:")]


def rotate_site_key(directory: Path | str, site: str) -> RosterChange:
    """A new Ed25519 key and broker password for ``site``; the roster lists the new key.

    Records the rotation in the site's audit log when the log is in ``sites/`` and holds
    rounds (module docstring). Raises ``ValueError`` for an unknown site,
    :class:`ConfigError` for a federation or site file that does not load,
    :class:`~peers.audit.AuditError` for a broken audit log; in each case before anything
    changes.
    """
    directory = Path(directory)
    path, federation = _load(directory, site)
    index = federation.roster.index_of(site)
    old_key = federation.roster.entries[index].verify_key.hex()
    key = SigningKey.generate(SystemRandomSource())
    text = path.read_text()
    if text.count(old_key) != 1:
        raise ConfigError(path, "sites", f"cannot find {site}'s verify_key exactly once")
    expected = list(federation.roster.entries)
    expected[index] = replace(expected[index], verify_key=key.public_bytes())
    sites_dir = directory / "sites"
    # The site's audit log, if it is here and holds rounds, verified under the old key
    # before anything changes (a broken log stops the rotation, AuditError); a site file
    # that does not load stops it too (ConfigError). An empty log here is not the site's
    # (init's copy of a site that keeps its own log): nothing to record in it.
    site_file = sites_dir / f"{site}.toml"
    audit: AuditLog | None = None
    previous = sites_dir / f"{site}.key.previous"
    if site_file.is_file():
        config = load_site(site_file)
        if config.audit_log.is_file() and config.audit_log.stat().st_size > 0:
            audit = AuditLog(config.audit_log, signing_key=config.signing_key)
    new_password = secrets.token_urlsafe(24)
    staged_key = sites_dir / f"{site}.key.new"
    try:
        if audit is not None:
            _replace(previous, (sites_dir / f"{site}.key").read_text(), secret=True)
        # the site's files first: a crash before the roster changes leaves the old key valid
        staged_key = _stage(
            sites_dir / f"{site}.key", key.private_bytes().hex() + "\n", secret=True
        )
        passwd = directory / "broker" / "passwd"
        others = _passwd_without(passwd, site)
        one = directory / "broker" / "passwd.one"
        one.unlink(missing_ok=True)
        _write_password_file(one, {site: new_password})
        hashed = one.read_text().strip()
        one.unlink()
        updated = _replace_atomically(
            path, text.replace(old_key, key.public_bytes().hex()), federation, expected
        )
    except BaseException:  # nothing changed: no key file may stay behind
        staged_key.unlink(missing_ok=True)
        if audit is not None:
            previous.unlink(missing_ok=True)
        raise
    os.replace(staged_key, sites_dir / f"{site}.key")
    _replace(sites_dir / f"{site}.password", new_password + "\n", secret=True)
    _replace(passwd, "\n".join([*others, hashed]) + "\n", secret=True)
    detail = f"{site}: new signing key {key.public_bytes().hex()[:16]}… and broker password"
    record = (
        f"mpc-agg audit rotate --config {site_file} --previous-key {previous}"
        if audit is not None
        else "mpc-agg audit rotate --config SITE.toml --previous-key OLD.key"
    )
    if audit is not None:
        try:
            # reopened: a round that ended meanwhile is verified and kept
            log = AuditLog(audit.path, signing_key=load_signing_key(previous))
            log.rotate_key(key)
        except (AuditError, ConfigError, OSError) as exc:
            detail += (
                f"; the rotation could NOT be recorded in its audit log ({exc}): record it "
                f"with `{record}` before the site's next round"
            )
        else:
            previous.unlink()
            detail += f"; rotation recorded in its audit log {log.path} (line {log.lines})"
    else:
        detail += (
            f"; no rounds in an audit log of {site} in {sites_dir}: if the site keeps its "
            f"log elsewhere, it records the rotation there, after installing the new key, "
            f"with `{record}`"
        )
    return RosterChange(
        federation=updated,
        old_digest=federation.roster.digest.hex(),
        new_digest=updated.roster.digest.hex(),
        detail=detail,
    )


def revoke_site(directory: Path | str, site: str) -> RosterChange:
    """Remove ``site`` from the roster, the broker's passwords and its ACL.

    The threshold is kept when it is still valid for the smaller roster; otherwise it
    becomes the protocol's default for it (``detail`` says so). Raises ``ValueError`` when
    too few sites would remain.
    """
    directory = Path(directory)
    path, federation = _load(directory, site)
    revoked = directory / "sites" / "revoked"
    if revoked.exists() and not revoked.is_dir():  # checked before anything changes
        raise ValueError(f"{revoked} exists and is not a directory")
    earlier = [p.name for p in revoked.glob(f"{site}.*")] if revoked.is_dir() else []
    if earlier:  # a site of that name revoked before: its files are not overwritten
        raise ValueError(
            f"{revoked} already holds {', '.join(sorted(earlier))} of an earlier {site}; "
            "move them away first"
        )
    kept = [e for e in federation.roster.entries if e.name != site]
    names = [e.name for e in kept]
    robust = federation.protocol == "robust"
    minimum = 3 if robust else 2
    if len(names) < minimum:
        raise ValueError(f"{federation.protocol} needs at least {minimum} sites; cannot revoke")
    threshold = federation.threshold
    valid = 1 <= threshold <= (len(names) - 1) // 2 if robust else 2 <= threshold <= len(names)
    detail = f"{site} revoked; {len(names)} sites remain"
    text = path.read_text()
    if not valid:
        new = (robust_default_threshold if robust else secagg_default_threshold)(len(names))
        text, count = re.subn(r"(?m)^threshold = \d+$", f"threshold = {new}", text)
        if count != 1:
            raise ConfigError(path, "federation.threshold", "cannot find it exactly once")
        detail += f"; threshold {threshold} → {new} (the old one is invalid for {len(names)})"
    updated = _replace_atomically(path, _without_site_block(path, text, site), federation, kept)
    passwd = directory / "broker" / "passwd"
    _replace(passwd, "\n".join(_passwd_without(passwd, site)) + "\n", secret=True)
    _replace(directory / "broker" / "acl", _acl(updated.id, names))
    revoked.mkdir(exist_ok=True)
    for suffix in (".key", ".password", ".toml", ".audit.jsonl"):  # init's names
        source = directory / "sites" / f"{site}{suffix}"
        if source.exists():
            os.replace(source, revoked / source.name)
    return RosterChange(
        federation=updated,
        old_digest=federation.roster.digest.hex(),
        new_digest=updated.roster.digest.hex(),
        detail=detail,
    )
