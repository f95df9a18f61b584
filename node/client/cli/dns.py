"""``form dns``: vanity names for your builds (``add``, ``remove``, ``list``), answered by every
node's DNS server as ``<domain>.fog`` with the addresses of the build's running instances."""

from __future__ import annotations

from collections.abc import Mapping

from node.client.cli._common import Commands, UsageError, _col, _json_out, _op, _Session, _table
from node.ledger.names import domain_problem, zone_name


def _domain(text: str) -> str:
    problem = domain_problem(text)
    if problem is not None:
        raise UsageError(f"--domain {text!r}: {problem}")
    return zone_name(text)


def cmd_dns_add(session: _Session) -> int:
    args = session.args
    domain = _domain(args.domain)
    build_id = args.build_id.strip().lower()
    result = session.client().dns_add(domain, build_id)
    if args.json:
        _json_out(result)
    else:
        print(f"{domain} -> build {build_id}{_op(result)}")
    return 0


def cmd_dns_remove(session: _Session) -> int:
    domain = _domain(session.args.domain)
    result = session.client().dns_remove(domain)
    if session.args.json:
        _json_out(result)
    else:
        print(f"removed {domain}{_op(result)}")
    return 0


def cmd_dns_list(session: _Session) -> int:
    result = session.client().dns_list()
    if session.args.json:
        _json_out(result)
        return 0
    _table(
        result.get("names") if isinstance(result, Mapping) else None,
        [_col("DOMAIN", "domain"), _col("BUILD", "build_id")],
    )
    return 0


def register(commands: Commands) -> None:
    dns = commands.branch("dns", "vanity DNS names (<domain>.fog) for your builds")
    add = dns.leaf("add", cmd_dns_add, "point a domain at one of your builds")
    add.add_argument("--domain", required=True, metavar="D", help="e.g. shop (served as shop.fog)")
    add.add_argument("--build-id", required=True, metavar="B", help="the build's 64-digit id")
    remove = dns.leaf("remove", cmd_dns_remove, "withdraw your domain")
    remove.add_argument("--domain", required=True, metavar="D")
    dns.leaf("list", cmd_dns_list, "every vanity name and its build")
