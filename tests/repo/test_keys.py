"""Repository signing keys (onix/repo/keys.py): generate a pair, sign and verify, and
refuse what is not a key or not the key's signature, naming the file."""

from __future__ import annotations

import base64
import os
import stat

import pytest
from conftest import snapshot

from onix.core.errors import OnixError
from onix.repo import keys

# signer and other_signer (fresh key pairs under tmp_path/keys*) come from conftest.py


def test_generate_writes_a_private_and_a_public_key(signer):
    private, public = signer
    assert private.name == "test.key" and public.name == "test.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert private.read_text().splitlines()[0] == "onix-ed25519-private v1"
    line = public.read_text()
    assert line.startswith("onix-ed25519 ") and line.endswith(" test key\n")
    pub = keys.load_public(public)
    assert len(pub.raw) == 32 and len(pub.key_id) == 16
    assert keys.load_public(line) == pub  # the line itself works as well as the file
    assert keys.public_of(private) == keys.PublicKey(pub.raw)
    # naming either file of the pair means the pair
    pair = keys.generate(out=private.with_name("second.key"), comment="")
    assert [p.name for p in pair] == ["second.key", "second.pub"]
    assert pair[1].read_text().count(" ") == 1  # no comment, no trailing field


def test_generate_never_overwrites(signer, tmp_path):
    before = snapshot(tmp_path / "keys")
    with pytest.raises(OnixError, match="never overwrites") as e:
        keys.generate(out=tmp_path / "keys" / "test", comment="again")
    assert e.value.path == str(signer[0])
    assert snapshot(tmp_path / "keys") == before


def test_sign_and_verify(signer, other_signer):
    sig = keys.sign(b"data", key=signer[0])
    lines = sig.decode().splitlines()
    pub = keys.load_public(signer[1])
    assert lines[0] == "onix-ed25519-signature v1" and lines[1] == pub.key_id
    keys.verify(b"data", sig, public=pub, where="x")
    with pytest.raises(OnixError, match=r"signature does not match.*bytes differ from"):
        keys.verify(b"date", sig, public=pub, where="x")
    other = keys.load_public(other_signer[1])
    with pytest.raises(OnixError, match=f"signed by key {pub.key_id}, expected key "
                       f"{other.key_id}") as e:
        keys.verify(b"data", sig, public=other, where="some/index.json")
    assert e.value.path == "some/index.json"
    with pytest.raises(OnixError, match="not an onix signature"):
        keys.verify(b"data", b"garbage", public=pub, where="x")


def test_private_key_readable_by_others_is_refused(signer):
    os.chmod(signer[0], 0o644)
    with pytest.raises(OnixError, match="readable by others") as e:
        keys.sign(b"x", key=signer[0])
    assert "chmod 600" in e.value.hint


def test_bad_key_files_name_themselves(signer, tmp_path):
    with pytest.raises(OnixError, match="not an onix public key") as e:
        keys.load_public(signer[0])
    assert "private key" in e.value.hint
    bad = tmp_path / "bad.pub"
    bad.write_text("onix-ed25519 AAAA comment\n")
    with pytest.raises(OnixError, match="not base64 of 32 bytes") as e:
        keys.load_public(bad)
    assert e.value.path == str(bad)
    with pytest.raises(OnixError, match="no such public key"):
        keys.load_public(tmp_path / "missing.pub")


def test_a_tampered_signature_is_refused(signer):
    # one byte of the signature changed: still well formed, still naming the right key
    pub = keys.load_public(signer[1])
    header, kid, b64 = keys.sign(b"index", key=signer[0]).decode().splitlines()
    raw = bytearray(base64.b64decode(b64))
    raw[10] ^= 0x01
    forged = f"{header}\n{kid}\n{base64.b64encode(bytes(raw)).decode()}\n".encode()
    with pytest.raises(OnixError, match="the right one, but the bytes differ") as e:
        keys.verify(b"index", forged, public=pub, where="repo/index.json.sig")
    assert e.value.path == "repo/index.json.sig"
    short = f"{header}\n{kid}\n{base64.b64encode(bytes(raw[:63])).decode()}\n".encode()
    with pytest.raises(OnixError, match="not base64 of 64 bytes"):
        keys.verify(b"index", short, public=pub, where="x")


def test_the_key_id_only_names_the_key_the_full_key_checks(signer):
    # a signature whose key-id line lies is still checked against the configured key
    pub = keys.load_public(signer[1])
    header, _kid, b64 = keys.sign(b"index", key=signer[0]).decode().splitlines()
    relabelled = f"{header}\n{'0' * 16}\n{b64}\n".encode()
    keys.verify(b"index", relabelled, public=pub, where="x")


@pytest.mark.parametrize("line", [
    "onix-ed25519",                             # no key
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5 me@host",  # another tool's key
    "onix-ed25519 !!!notbase64!!! c",
    "onix-ed25519 " + base64.b64encode(bytes(31)).decode(),  # 31 bytes, not 32
])
def test_a_malformed_public_key_line_is_refused(line):
    with pytest.raises(OnixError, match=r"not an onix public key|not base64 of 32 bytes") as e:
        keys.parse_public(line, where="etc/onix/repos/main.conf:3")
    assert e.value.path == "etc/onix/repos/main.conf:3"


def test_a_public_key_is_no_signing_key_and_a_comment_is_one_line(signer, tmp_path):
    with pytest.raises(OnixError, match="not an onix private key") as e:
        keys.sign(b"x", key=signer[1])
    assert "public half" in e.value.hint
    with pytest.raises(OnixError, match="one line"):
        keys.generate(out=tmp_path / "keys" / "two", comment="a\nb")
    assert not list((tmp_path / "keys").glob("two.*"))
