"""``form pack``: Formfiles into images. ``validate`` here; ``build`` and ``status`` come from
``_pack_build``.

``form pack validate [PATH]`` checks a Formfile the way a node will (``node.pack.formfile.parse``
with the limits of a network) and, since it runs where the files are, also that every COPY
source exists inside the Formfile's directory. It never needs a key, and needs the gateway only
to learn the network when ``--limits`` is not given.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from node.client.api import ClientError
from node.client.cli._common import Commands, UsageError, _json_out, _Session
from node.client.cli._pack_build import _copy_problems, add_build_commands
from node.client.cli._pack_ship import add_ship_command

__all__ = ["register"]


def _limits_name(session: _Session) -> tuple[str, str | None]:
    """The limits to check with, and a note when the network could not be asked."""
    from node.pack.formfile import limits_for_network

    chosen: str | None = session.args.limits
    if chosen is not None:
        return chosen, None
    try:
        network = session.client(signed=False).node_info().get("network", "mainnet")
    except ClientError as exc:
        return (
            "mainnet",
            f"note: could not ask the gateway for its network ({exc}); checked with mainnet limits (pass --limits)",
        )
    return limits_for_network(str(network)).name, None


def _summary(formfile: Any) -> dict[str, Any]:
    return {
        "name": formfile.name,
        "vcpus": formfile.vcpus,
        "memory_mb": formfile.memory_mb,
        "disk_gb": formfile.disk_gb,
        "gpus": sum(gpu.count for gpu in formfile.gpus),
        "users": [user.username for user in formfile.users],
        "steps": len(formfile.steps),
        "ports": list(formfile.expose),
        "entrypoint": list(formfile.entrypoint.argv) if formfile.entrypoint else None,
    }


def cmd_pack_validate(session: _Session) -> int:
    from node.pack.formfile import LIMITS, FormfileError, parse

    args = session.args
    path: Path = args.path
    if path.is_dir():
        path = path / "Formfile"
    limits_name, note = _limits_name(session)
    limits = LIMITS[limits_name]
    try:
        with path.open("rb") as handle:
            # One byte over the bound is enough for the parser to say the file is too big.
            data = handle.read(limits.text_bytes_max + 1)
    except FileNotFoundError:
        raise UsageError(f"no Formfile at {path}; pass its path, or run where it is") from None
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc}") from None
    if note is not None:
        print(note, file=sys.stderr)
    errors: list[dict[str, Any]] = []
    summary: dict[str, Any] | None = None
    try:
        formfile = parse(data, path=str(path), limits=limits)
    except FormfileError as exc:
        errors = [
            {"path": d.path, "line": d.line, "col": d.col, "message": d.message}
            for d in exc.diagnostics
        ]
    else:
        errors = _copy_problems(formfile, data.decode("utf-8", "replace"), path.parent)
        summary = _summary(formfile)
    valid = not errors
    if args.json:
        _json_out(
            {
                "valid": valid,
                "limits": limits_name,
                "errors": errors,
                "summary": summary if valid else None,
            }
        )
    elif valid and summary is not None:
        ports = ",".join(str(p) for p in summary["ports"]) or "none"
        print(
            f"{path}: valid ({limits_name} limits): {summary['name']}, {summary['vcpus']} vCPU, "
            f"{summary['memory_mb']} MB memory, {summary['disk_gb']} GB disk, "
            f"{summary['steps']} steps, ports {ports}"
        )
    else:
        for error in errors:
            print(
                f"{error['path']}:{error['line']}:{error['col']}: {error['message']}",
                file=sys.stderr,
            )
    return 0 if valid else 1


def register(commands: Commands) -> None:
    pack = commands.branch(
        "pack", "Formfiles into bootable images: validate one, build it on the fog, follow a build"
    )
    validate = pack.leaf(
        "validate",
        cmd_pack_validate,
        "check a Formfile as a node would, and that its COPY sources exist; "
        "exit 0 with a one-line summary, or 1 with every error as PATH:LINE:COL: message",
    )
    validate.add_argument(
        "path",
        nargs="?",
        type=Path,
        default=Path("Formfile"),
        metavar="PATH",
        help="the Formfile, or a directory holding one (default ./Formfile); COPY sources are "
        "looked for in its directory",
    )
    validate.add_argument(
        "--limits",
        choices=("devnet", "mainnet"),
        help="check resources against these limits (devnet: up to 2 vCPU, 512-4096 MB, 5 GB; "
        "mainnet: 1-128 vCPU, 512-256000 MB, 5-65535 GB). Default: those of the gateway's "
        "network, or mainnet when no gateway answers",
    )
    add_build_commands(pack)
    add_ship_command(pack)
