"""Reaching a repository: a local directory, a file:// URL or http(s).

`read` gets a whole file (an index, its signature) with a size limit; `open_stream` and
`chunks` stream a stone. A read that makes no progress for TIMEOUT seconds gives up.
Every failure is one OnixError naming the URL and what to check.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from onix.core.errors import OnixError

TIMEOUT = 30.0  # seconds without progress before a network read gives up
CHUNK = 1 << 20


def normalize_uri(uri: str) -> str:
    """An absolute directory path, file:// URL or http(s) URL, without a trailing slash."""
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    if parts.scheme in ("http", "https"):
        if not parts.netloc:
            raise OnixError("URL has no host", path=uri, hint="write it as http://host/path")
        return uri.rstrip("/")
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise OnixError("file:// URLs must name a local path", path=uri,
                            hint="write it as file:///absolute/path")
        return "file://" + (parts.path.rstrip("/") or "/")
    if parts.scheme:
        raise OnixError(f"unsupported URI scheme {parts.scheme}://", path=uri,
                        hint="use a directory, a file:// URL or an http(s):// URL")
    if not uri:
        raise OnixError("empty repository URI", hint="give a directory or an http(s) URL")
    return os.path.abspath(uri)


def local_base(uri: str) -> Path | None:
    from urllib.parse import urlsplit
    from urllib.request import url2pathname

    if uri.startswith("file://"):
        return Path(url2pathname(urlsplit(uri).path))
    if "://" not in uri:
        return Path(uri)
    return None


def join(uri: str, file: str) -> str:
    from urllib.parse import quote

    base = local_base(uri)
    if base is not None and not uri.startswith("file://"):
        return str(base / file)
    return f"{uri.rstrip('/')}/{quote(file)}"


class NotFound(Exception):
    pass


_NET_HINT = "check the URI and that the server is up, then retry (onix repo update NAME)"


def open_stream(uri: str, file: str) -> BinaryIO:
    """A stream of `file` in the repository at `uri`; NotFound for a missing file."""
    import urllib.error
    import urllib.request

    where = join(uri, file)
    base = local_base(uri)
    if base is not None:
        if not base.is_dir():
            raise OnixError("no such repository directory", path=base,
                            hint="check the path (a repository is a directory of stones with "
                            "an index.json made by onix index)")
        try:
            return open(base / file, "rb")  # the caller closes it
        except (FileNotFoundError, IsADirectoryError):
            raise NotFound(where) from None
        except OSError as e:
            raise OnixError(f"cannot read: {e.strerror}", path=where,
                            hint="check the file's permissions") from None
    try:
        # only http(s) gets here: normalize_uri refused every other scheme
        return urllib.request.urlopen(where, timeout=TIMEOUT)
    except urllib.error.HTTPError as e:
        e.close()
        if e.code in (404, 410):
            raise NotFound(where) from None
        raise OnixError(f"HTTP {e.code} {e.reason}", path=where, hint=_NET_HINT) from None
    except urllib.error.URLError as e:
        raise OnixError(f"cannot reach the server ({e.reason})", path=where,
                        hint=_NET_HINT) from None
    except (TimeoutError, OSError) as e:
        raise OnixError(f"cannot reach the server ({e})", path=where, hint=_NET_HINT) from None


def chunks(stream: BinaryIO, where: str) -> Iterable[bytes]:
    while True:
        try:
            chunk = stream.read(CHUNK)
        except (TimeoutError, OSError) as e:
            raise OnixError(f"the transfer broke off ({e})", path=where,
                            hint=_NET_HINT) from None
        except Exception as e:  # http.client.IncompleteRead and friends: a short response
            raise OnixError(f"the transfer broke off ({e.__class__.__name__})", path=where,
                            hint=_NET_HINT) from None
        if not chunk:
            return
        yield chunk


def read(uri: str, file: str, *, limit: int) -> bytes:
    where = join(uri, file)
    with open_stream(uri, file) as stream:
        out = bytearray()
        for chunk in chunks(stream, where):
            out += chunk
            if len(out) > limit:
                raise OnixError(f"larger than {limit} bytes; not a repository index", path=where,
                                hint="check the URI")
    return bytes(out)


