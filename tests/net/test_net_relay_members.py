"""Whom a relay serves (`swarmnode.net.relay_members`): the allow-list decision, no network.

Attack: a peer that is no member reserves a slot on the organiser's relay, or has it open
circuits from or to a non-member, spending the relay's bandwidth. The decision admits the
genesis founders and the members file's additions, minus its removals, and refuses a
request when either end (the asker, or the peer it names) is outside that list.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from swarmnode.net.relay_members import MembersFile, RelayAllowList, refused_end
from swarmnode.testing import make_identity

FOUNDER, OTHER_FOUNDER, JOINER, OUTSIDER = (make_identity(i, "relay-members").node_id for i in range(4))


def _rewrite(path: Path, text: str) -> None:
    """Write `text` with a later mtime, as an editor saving the file a moment later would."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text)
    os.utime(path, ns=(before + 10**9, before + 10**9))


def test_founders_are_admitted_and_anyone_else_refused() -> None:
    allowed = RelayAllowList([FOUNDER, OTHER_FOUNDER], None)
    assert allowed.admits(FOUNDER)
    assert allowed.admits(OTHER_FOUNDER)
    assert not allowed.admits(OUTSIDER)
    assert refused_end(allowed.admits, [FOUNDER, OTHER_FOUNDER]) is None
    assert refused_end(allowed.admits, [OUTSIDER, FOUNDER]) == 0  # a non-member asking
    assert refused_end(allowed.admits, [FOUNDER, OUTSIDER]) == 1  # a member naming a non-member
    assert refused_end(allowed.admits, [FOUNDER, None]) == 1  # a named peer that is no Ed25519 key


def test_the_members_file_adds_joiners_and_removes_leavers(tmp_path: Path) -> None:
    path = tmp_path / "members.txt"
    _rewrite(path, f"# joined in round 3\nhospital-d={JOINER.peer_id}@/ip4/10.0.0.4/tcp/7000\n\n")
    allowed = RelayAllowList([FOUNDER, OTHER_FOUNDER], path)
    assert allowed.members == {FOUNDER, OTHER_FOUNDER, JOINER}

    _rewrite(path, f"{JOINER.peer_id}\n-{OTHER_FOUNDER.peer_id}  # removed by vote\n{OUTSIDER.peer_id}\n")
    assert allowed.members == {FOUNDER, JOINER, OUTSIDER}  # read again: no restart needed
    assert not allowed.admits(OTHER_FOUNDER)


def test_a_broken_members_file_keeps_the_last_good_list(tmp_path: Path) -> None:
    path = tmp_path / "members.txt"
    _rewrite(path, f"{JOINER.peer_id}\n")
    allowed = RelayAllowList([FOUNDER], path)
    _rewrite(path, f"{JOINER.peer_id}\n12D3KooWnot-a-key\n")
    assert allowed.members == {FOUNDER, JOINER}
    path.unlink()
    assert allowed.members == {FOUNDER, JOINER}


def test_a_bad_line_is_named_by_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "members.txt"
    with pytest.raises(ValueError, match=r"members\.txt:2: 'deadbeef'"):
        MembersFile.parse(path, f"{JOINER.peer_id}\nsite=deadbeef@/ip4/10.0.0.1/tcp/7000\n")
