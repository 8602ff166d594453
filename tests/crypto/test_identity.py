from __future__ import annotations

import os
from pathlib import Path

import pytest

from crypto.errors import BadSignature, KeyFileError, SealedBoxError
from crypto.identity import NodeId, NodeIdentity


def test_save_load_round_trip_with_mode_0600(tmp_path: Path) -> None:
    key = NodeIdentity.generate()
    path = tmp_path / "node.key"
    key.save(path)

    assert (path.stat().st_mode & 0o777) == 0o600
    loaded = NodeIdentity.load(path)
    assert loaded.node_id == key.node_id
    assert loaded.seed == key.seed


def test_save_is_0600_even_with_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        NodeIdentity.generate().save(tmp_path / "k")
    finally:
        os.umask(old)
    assert ((tmp_path / "k").stat().st_mode & 0o777) == 0o600


def test_save_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    NodeIdentity.generate().save(path)
    before = path.read_bytes()

    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        NodeIdentity.generate().save(path)
    assert path.read_bytes() == before


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644, 0o666, 0o620])
def test_load_refuses_group_or_world_accessible_key(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "node.key"
    NodeIdentity.generate().save(path)
    path.chmod(mode)

    with pytest.raises(KeyFileError) as info:
        NodeIdentity.load(path)
    message = str(info.value)
    assert str(path) in message
    assert "chmod 600" in message
    assert f"{mode:04o}" in message


def test_load_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match=r"nope\.key: key file not found"):
        NodeIdentity.load(tmp_path / "nope.key")


@pytest.mark.parametrize(
    "content",
    [
        "",
        "# only a comment\n",
        "ed25519-seed: zz\n",
        "ed25519-seed: " + "ab" * 31 + "\n",
        "ed25519-seed: " + "ab" * 32 + "\ned25519-seed: " + "cd" * 32 + "\n",
        "rsa-key: " + "ab" * 32 + "\n",
        "ed25519-seed " + "ab" * 32 + "\n",
        "\xff\xfe",
    ],
)
def test_load_malformed_key_file(tmp_path: Path, content: str) -> None:
    path = tmp_path / "bad.key"
    path.write_bytes(content.encode("latin-1"))
    path.chmod(0o600)

    with pytest.raises(KeyFileError, match=r"bad\.key"):
        NodeIdentity.load(path)


def test_peer_id_matches_py_libp2p() -> None:
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.peer.id import ID

    for _ in range(20):
        key = NodeIdentity.generate()
        libp2p_key = create_new_key_pair(key.seed)
        assert libp2p_key.public_key.to_bytes() == key.public_key
        assert ID.from_pubkey(libp2p_key.public_key).to_base58() == key.node_id.peer_id
    assert key.node_id.peer_id.startswith("12D3KooW")


def test_sign_and_verify() -> None:
    key = NodeIdentity.generate()
    signature = key.sign(b"hello")

    key.node_id.verify(b"hello", signature)
    with pytest.raises(BadSignature):
        key.node_id.verify(b"hellO", signature)
    with pytest.raises(BadSignature):
        NodeIdentity.generate().node_id.verify(b"hello", signature)
    with pytest.raises(BadSignature, match="64"):
        key.node_id.verify(b"hello", signature[:-1])


def test_sealed_box_opens_only_for_its_recipient() -> None:
    alice, bob = NodeIdentity.generate(), NodeIdentity.generate()
    box = bob.node_id.seal(b"share for bob")

    assert bob.unseal(box) == b"share for bob"
    with pytest.raises(SealedBoxError):
        alice.unseal(box)
    tampered = bytearray(box)
    tampered[-1] ^= 1
    with pytest.raises(SealedBoxError):
        bob.unseal(bytes(tampered))
    with pytest.raises(SealedBoxError):
        bob.unseal(b"short")


def test_x25519_key_derives_from_the_ed25519_key() -> None:
    key = NodeIdentity.from_seed(bytes(range(32)))
    again = NodeIdentity.from_seed(bytes(range(32)))
    assert bytes(key.node_id.x25519_public_key()) == bytes(again.node_id.x25519_public_key())
    assert bytes(key.node_id.x25519_public_key()) != key.public_key


def test_node_id_validation() -> None:
    with pytest.raises(ValueError, match="32-byte"):
        NodeId(b"\x01" * 31)
    with pytest.raises(ValueError, match="seed"):
        NodeIdentity.from_seed(b"\x00" * 16)
