"""Ed25519 keys that sign repository indexes, and the signatures they make.

On-disk formats (all UTF-8 text, base64 is standard base64 with padding)
------------------------------------------------------------------------
    private key  <out>.key, mode 0600, two lines:
                     onix-ed25519-private v1
                     <base64 of the 32-byte ed25519 seed>
    public key   <out>.pub, one line (also the `key =` value of a repository config):
                     onix-ed25519 <base64 of the 32-byte raw public key> <comment>
    signature    e.g. index.json.sig, three lines:
                     onix-ed25519-signature v1
                     <key id>
                     <base64 of the 64-byte ed25519 signature over the signed file's bytes>

The key id is the first 16 hex digits of blake3(raw public key). It only names the key
in messages (which key signed, which one was expected); the signature check itself
always uses the full configured public key.

`cryptography` is imported inside the functions that need it: `onix status` and every
other command that never touches a key must not pay for loading it.
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from onix.core.errors import OnixError
from onix.core.fsutil import atomic_write

if TYPE_CHECKING:  # cryptography is imported only when a key is used
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

PRIVATE_HEADER = "onix-ed25519-private v1"
PUBLIC_TAG = "onix-ed25519"
SIGNATURE_HEADER = "onix-ed25519-signature v1"
# A key file is a few dozen bytes; refuse to slurp something huge passed by mistake.
_MAX_KEY_FILE = 64 << 10


def key_id(raw: bytes) -> str:
    import blake3

    return blake3.blake3(raw).hexdigest()[:16]


@dataclass(frozen=True)
class PublicKey:
    raw: bytes
    comment: str = ""

    @property
    def key_id(self) -> str:
        return key_id(self.raw)

    def line(self) -> str:
        """The one-line text form (the .pub file without its newline)."""
        text = f"{PUBLIC_TAG} {base64.b64encode(self.raw).decode()}"
        return f"{text} {self.comment}" if self.comment else text

    def as_dict(self) -> dict:
        return {"key_id": self.key_id, "public_key": self.line(), "comment": self.comment}


def _b64(text: str, *, size: int, what: str, path: Path | str) -> bytes:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != size:
        raise OnixError(f"{what} is not base64 of {size} bytes", path=path,
                        hint="use a file made by onix key generate")
    return raw


def _read_small(path: Path, what: str) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_KEY_FILE + 1)
    except FileNotFoundError:
        raise OnixError(f"no such {what}", path=path,
                        hint="check the path, or make a key pair with onix key generate") from None
    except IsADirectoryError:
        raise OnixError(f"is a directory, not a {what}", path=path,
                        hint="pass the key file itself") from None
    if len(data) > _MAX_KEY_FILE:
        raise OnixError(f"too large to be a {what}", path=path,
                        hint="pass a file made by onix key generate")
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise OnixError(f"is not a {what} (not UTF-8 text)", path=path,
                        hint="pass a file made by onix key generate") from None


def generate(*, out: Path, comment: str) -> tuple[Path, Path]:
    """Make a new key pair at `<out>.key` (mode 0600) and `<out>.pub`; never overwrite.

    `out` may name either file of the pair (a trailing .key or .pub is dropped)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    out = Path(out)
    if out.suffix in (".key", ".pub"):  # `--out keys/main.key` means the pair keys/main.*
        out = out.with_suffix("")
    if any(c in comment for c in "\r\n"):
        raise OnixError("the key comment must be one line", path=out,
                        hint="pass a comment without newlines")
    private_path = out.with_name(out.name + ".key")
    public_path = out.with_name(out.name + ".pub")
    for p in (private_path, public_path):
        if p.exists() or p.is_symlink():
            raise OnixError("already exists; onix never overwrites a key", path=p,
                            hint="choose another name, or move the old key pair away first")
    if not out.parent.is_dir():
        raise OnixError("no such directory for the key pair", path=out.parent,
                        hint="create it first, or pass another --out")
    key = Ed25519PrivateKey.generate()
    seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                             serialization.NoEncryption())
    raw = key.public_key().public_bytes(serialization.Encoding.Raw,
                                        serialization.PublicFormat.Raw)
    atomic_write(private_path,
                 f"{PRIVATE_HEADER}\n{base64.b64encode(seed).decode()}\n".encode(), mode=0o600)
    try:
        atomic_write(public_path, (PublicKey(raw, comment.strip()).line() + "\n").encode(),
                     mode=0o644)
    except BaseException:
        # Half a key pair is worse than none: the next try would refuse to overwrite it.
        private_path.unlink(missing_ok=True)
        raise
    return private_path, public_path


def load_private(path: Path) -> Ed25519PrivateKey:
    """The Ed25519PrivateKey in a `.key` file; refused if others can read it (like ssh)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = Path(path)
    text = _read_small(path, "private key")
    lines = text.splitlines()
    if len(lines) != 2 or lines[0] != PRIVATE_HEADER:
        hint = ("that is the public half; sign with the .key file"
                if text.startswith(PUBLIC_TAG + " ") else "pass a file made by onix key generate")
        raise OnixError(f"is not an onix private key (first line must be {PRIVATE_HEADER!r})",
                        path=path, hint=hint)
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        raise OnixError(f"private key is readable by others (mode {mode:04o})", path=path,
                        hint=f"chmod 600 {path}")
    seed = _b64(lines[1], size=32, what="the private key", path=path)
    return Ed25519PrivateKey.from_private_bytes(seed)


def parse_public(text: str, *, where: Path | str) -> PublicKey:
    """Parse the one-line public key text; `where` names its origin in errors."""
    line = text.strip()
    parts = line.split(None, 2)
    if len(parts) < 2 or parts[0] != PUBLIC_TAG or "\n" in line:
        hint = ("that is a private key; give the .pub file"
                if line.startswith(PRIVATE_HEADER) else
                f"give the .pub file or its line ({PUBLIC_TAG} <base64> <comment>)")
        raise OnixError(f"is not an onix public key (expected one line starting {PUBLIC_TAG!r})",
                        path=where, hint=hint)
    raw = _b64(parts[1], size=32, what="the public key", path=where)
    return PublicKey(raw, parts[2].strip() if len(parts) > 2 else "")


def load_public(text_or_path: str | Path) -> PublicKey:
    """A public key from its line (`onix-ed25519 …`) or from a file holding it."""
    if isinstance(text_or_path, str) and text_or_path.lstrip().startswith(PUBLIC_TAG + " "):
        return parse_public(text_or_path, where="the public key given")
    path = Path(text_or_path)
    return parse_public(_read_small(path, "public key"), where=path)


def public_of(key: Path) -> PublicKey:
    """The public half of a private key file (what `onix index` reports it signed with)."""
    from cryptography.hazmat.primitives import serialization

    raw = load_private(key).public_key().public_bytes(serialization.Encoding.Raw,
                                                      serialization.PublicFormat.Raw)
    return PublicKey(raw)


def sign(data: bytes, *, key: Path) -> bytes:
    """The signature file content for `data`, signed with the private key file `key`."""
    from cryptography.hazmat.primitives import serialization

    private = load_private(Path(key))
    raw = private.public_key().public_bytes(serialization.Encoding.Raw,
                                            serialization.PublicFormat.Raw)
    sig = private.sign(data)
    return f"{SIGNATURE_HEADER}\n{key_id(raw)}\n{base64.b64encode(sig).decode()}\n".encode()


def verify(data: bytes, sig: bytes, *, public: PublicKey, where: Path | str,
           whose: str = "the given public key", hint: str | None = None) -> None:
    """Raise OnixError naming `where` unless `sig` is `public`'s signature over `data`.

    `whose` describes the expected key in the message ("the key configured for
    repository main"), `hint` replaces the default advice. The message also names the
    key id the file claims and the expected one, so a key rotation reads differently
    from a tampered file.
    """
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    hint = hint or ("the file was changed after signing, or signed with another key: re-sign "
                    "it (onix index DIR --key KEY), or configure the signer's real public key")
    try:
        lines = sig.decode().splitlines()
    except UnicodeDecodeError:
        lines = []
    if len(lines) != 3 or lines[0] != SIGNATURE_HEADER:
        raise OnixError(f"signature does not match {whose}: the signature file is not an "
                        f"onix signature (first line must be {SIGNATURE_HEADER!r})",
                        path=where, hint=hint)
    claimed = lines[1].strip()
    try:
        raw_sig = base64.b64decode(lines[2].strip(), validate=True)
    except (binascii.Error, ValueError):
        raw_sig = b""
    if len(raw_sig) != 64:
        raise OnixError(f"signature does not match {whose}: the signature is not base64 of "
                        "64 bytes", path=where, hint=hint)
    try:
        Ed25519PublicKey.from_public_bytes(public.raw).verify(raw_sig, data)
    except InvalidSignature:
        if claimed != public.key_id:
            detail = f"signed by key {claimed}, expected key {public.key_id}"
        else:
            detail = f"it names key {claimed}, the right one, but the bytes differ from " \
                "what was signed"
        raise OnixError(f"signature does not match {whose} ({detail})", path=where,
                        hint=hint) from None
