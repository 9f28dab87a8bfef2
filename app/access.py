"""Who may drive the app: the address it binds to, and whether the pages that act on this machine are on.

The app has no login. On a loopback address only this machine reaches it, so every page is on. On any other
address (``--host 0.0.0.0``, a LAN address) anyone who reaches the port can use it, so `interp app` warns and
keeps off, unless ``--allow-remote-control`` is given, the pages that act on the machine: the New run page
(it starts `interp patch`), the runs-directory box (it opens, and offers as zip downloads, any folder the
server can read) and loading a model by path on the Attention page. Nothing here imports Streamlit.
"""

from __future__ import annotations

import errno
import ipaddress
import re
import socket

from interp.errors import InterpError

CONTROL_ENV = "INTERP_APP_CONTROL"  # "on" or "off", set by `interp app`; unset: on only for a loopback address
LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback")


def _literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def is_loopback_name(host: str | None) -> bool:
    """Whether ``host`` is written as a loopback address or name (no lookup)."""
    if not host:
        return False
    address = _literal(host)
    return address.is_loopback if address is not None else host.lower().rstrip(".") in LOOPBACK_NAMES


def resolve_host(host: str, port: int) -> list[str]:
    """The addresses ``host`` stands for, checked by binding each on ``port``; a one-line `InterpError` for an
    address that is not valid, not of this machine, or whose port is taken."""
    host = host.strip()
    if not host or any(ch.isspace() or ord(ch) < 32 for ch in host):
        raise InterpError(f"--host {host!r} is not an address: use localhost (the default), 127.0.0.1 or 0.0.0.0")
    literal = _literal(host)
    if literal is None and re.fullmatch(r"[0-9.]+|[0-9a-fA-F:]*:[0-9a-fA-F:.]*", host.strip("[]")):
        raise InterpError(f"--host {host} is not a valid IP address: use localhost (the default), 127.0.0.1 or 0.0.0.0")
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, OSError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise InterpError(f"--host {host} cannot be resolved to an address ({reason}): use localhost, 127.0.0.1 or 0.0.0.0") from None
    addresses = []
    for family, kind, proto, _, sockaddr in infos:
        if sockaddr[0] in addresses:
            continue
        try:
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server itself binds
                probe.bind(sockaddr)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise InterpError(f"port {port} on {host} is in use: pass another --port") from None
            if e.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                continue
            raise InterpError(f"cannot serve on {host}:{port}: {e.strerror or e}") from None
        addresses.append(sockaddr[0])
    if not addresses:
        raise InterpError(f"--host {host} is not an address of this machine: use localhost, 127.0.0.1, 0.0.0.0 "
                          "or one of this machine's own addresses")
    return addresses


def is_local(addresses: list[str]) -> bool:
    """Whether every address is a loopback one, reachable only from this machine."""
    return all((_literal(a) is not None and _literal(a).is_loopback) for a in addresses)


def remote_warning(host: str, port: int, control: bool) -> str:
    """The warning `interp app` prints when it serves beyond this machine."""
    lines = [
        f"WARNING: --host {host} makes the app reachable from other machines, with no password: anyone who can "
        f"reach port {port} can read every run in the runs directory.",
    ]
    if control:
        lines.append("WARNING: --allow-remote-control is on: anyone who reaches the app can also start `interp patch` "
                     "runs on this machine and open any folder it can read. Use it only on a network you trust.")
    else:
        lines.append("The New run page, the runs-directory box and loading models by path are off; add "
                     "--allow-remote-control to turn them on (only on a network you trust).")
    return "\n".join(lines)


def control_allowed(env: dict, server_address: str | None) -> bool:
    """Whether the pages that act on this machine are on: as `interp app` decided (``$INTERP_APP_CONTROL``), else
    (``streamlit run`` directly) only when the server is bound to a loopback address."""
    flag = env.get(CONTROL_ENV)
    if flag in ("on", "off"):
        return flag == "on"
    return is_loopback_name(server_address)
