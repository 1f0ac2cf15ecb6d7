"""What a project URI is, and how to show it without its password."""

from __future__ import annotations

import re
from typing import Iterable
from urllib.parse import quote, unquote, urlsplit, urlunsplit

ARCHIVE_SUFFIXES = (".zip", ".tar.gz", ".tgz", ".tar")
#: ``git@host:org/repo.git``: scp-like ssh syntax (no scheme).
_SCP_LIKE = re.compile(r"^(?:[\w.~-]+@)?[\w.-]+:(?!//)(?!\d+(?:/|$))[^\\]")
_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][\w+.-]*://)(?P<user>[^/@:\s]*):(?P<password>[^/@\s]*)@")
GIT_SCHEMES = ("http", "https", "ssh", "git", "git+ssh", "ssh+git", "git+https", "git+http")


#: http(s) user information: a token is often given as the user name alone.
_HTTP_USERINFO = re.compile(r"(?P<scheme>(?:git\+)?https?://)[^/@\s]*@", re.I)
#: Query strings of http(s) URLs: presigned URLs carry their signature there.
_HTTP_QUERY = re.compile(r"(?P<url>(?:git\+)?https?://[^\s?#]*)\?[^\s#]*", re.I)


def redact(uri: str) -> str:
    """``uri`` (or a text holding URIs) without credentials.

    http(s): all user information and any query string go
    (``https://TOKEN@host/r?sig=x`` -> ``https://host/r``); other schemes keep
    the user name, which is not a secret for ssh (``ssh://git@host``), and lose
    a password.
    """
    uri = _HTTP_USERINFO.sub(lambda m: m["scheme"], uri)
    uri = _HTTP_QUERY.sub(lambda m: m["url"], uri)
    return _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}@", uri)


def strip_credentials(url: str) -> str:
    """``url`` as git is given it, and as the cache is keyed by: no credentials.

    For http(s) the whole user information goes (a token is often the user name);
    for ssh and others only a password (which ssh would not use anyway).
    """
    parts = urlsplit(url)
    if not parts.scheme or "@" not in parts.netloc:
        return url
    if parts.scheme.lower() not in ("http", "https"):
        return redact(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def secrets_of(url: str) -> list[str]:
    """The secrets of ``url`` in the forms they may appear in (as written, decoded, re-quoted):
    its password, and for http(s) its user name (often a token) and query string."""
    parts = urlsplit(url)
    try:
        values = [parts.password]
    except ValueError:
        values = []
    if parts.scheme.lower().removeprefix("git+") in ("http", "https"):
        values += [parts.username, parts.query]
    forms = set()
    for value in filter(None, values):
        forms |= {value, unquote(value), quote(unquote(value), safe="")}
    return sorted((f for f in forms if len(f) > 2), key=len, reverse=True)


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` (an error message, git's stderr) with every password in it removed."""
    text = redact(text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def is_archive(path: str) -> bool:
    return path.lower().endswith(ARCHIVE_SUFFIXES)


def is_scp_like(uri: str) -> bool:
    return "://" not in uri and bool(_SCP_LIKE.match(uri)) and not re.match(r"^[a-zA-Z]:[\\/]", uri)


def credential_config(url: str) -> dict[str, str]:
    """git configuration that puts ``url``'s credentials back on the credential-free URL.

    git is only ever given :func:`strip_credentials` of a URL, so the password is
    written into no config file and shows in no process list; this ``insteadOf``
    rule, passed through the environment, restores it for that host (submodules on
    the same host included, as a credential helper would).
    """
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or "@" not in parts.netloc:
        return {}
    host = parts.netloc.rsplit("@", 1)[1]
    clean = urlunsplit((parts.scheme, host, "/", "", ""))
    real = urlunsplit((parts.scheme, parts.netloc, "/", "", ""))
    return {f"url.{real}.insteadOf": clean}
