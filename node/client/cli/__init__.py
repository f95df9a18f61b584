"""``form``: the user's command line for a formation node's gateway.

Theory of operation
-------------------
``form`` is a plain synchronous program: parse the arguments, maybe unlock the user's key,
make one or two requests through ``node.client.api.GatewayClient``, print the answer. The key
is read (and its password asked for) only by commands that sign, so ``form agent list``,
``form model list``, ``form node list`` or ``form status`` work without one.

Where things come from, first match wins:

* gateway: ``--gateway``, ``$FORM_GATEWAY``, ``http://127.0.0.1:3004`` (the upstream port);
* keystore: ``--keystore``, ``$FORM_KEYSTORE``, ``$XDG_CONFIG_HOME/formation/form-key.json``
  (``~/.config/...``), an Ethereum keystore v3 file that any wallet can also open;
* password: ``--password-file``, ``$FORM_PASSWORD``, a prompt on the terminal.

Global options may come before or after the command (``form --json agent list`` and
``form agent list --json`` mean the same).

Output is for people by default (aligned ``key  value`` lines and tables) and the gateway's JSON
verbatim with ``--json``. An agent's answer (``agent hire``, ``agent run``) is copied to stdout
byte for byte as it streams in, in both modes.

Exit status: 0 done; 1 the gateway refused (``error: <message> (<code>)`` on stderr) or could not
be reached or answered badly; 2 a usage problem the user can fix before any request (bad
option, missing keystore, wrong password, unreadable file); 130 interrupted; 141 (as if killed
by SIGPIPE) when stdout closes early, as in ``form agent list | head -1``.

Layout
------
``_common.py`` holds what every command shares (the session, the global options, output, error
reports and their exit statuses); each command group is one module (``init`` for ``form init``
and ``form status``, then ``account``, ``manage``, ``agent``, ``model``, ``node``, ``key``, ``pack``, ``dns``, ``credits``), and
``_listing.py`` the marketplace commands agents and models share. A group module has a
``register(commands)`` that adds its subcommands and their handlers. Adding a group: write its
module and put its ``register`` in ``_GROUPS`` below, where it should appear in ``form --help``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

import httpx

from node import __version__
from node.client.api import ClientError
from node.client.cli import account, agent, credits, dns, init, key, manage, model, node, pack
from node.client.cli._common import GATEWAY_DEFAULT as GATEWAY_DEFAULT
from node.client.cli._common import Commands, UsageError, _report, _root_parser, _Session
from node.client.cli._common import default_keystore as default_keystore
from node.client.cli.key import SCOPES as SCOPES
from node.client.cli.node import _age as _age
from node.client.cli.node import _bytes_text as _bytes_text
from node.identity.keystore import KeystoreError

__all__ = ["GATEWAY_DEFAULT", "SCOPES", "default_keystore", "main"]

# Keyword arguments for write_keystore, handed to every session (tests lower the scrypt work
# factor here; a user's key keeps geth's standard parameters).
_KEYSTORE_KW: dict[str, Any] = {}

_DESCRIPTION: Final = (
    "Use the Formation marketplace through a node's gateway: your account, instances, "
    "agents, models, the fog's nodes and delegate keys. Requests that change or read private state are signed "
    "with your key (an Ethereum keystore); see 'form init'."
)
# The command groups, in the order `form --help` lists them.
_GROUPS: Final[tuple[Callable[[Commands], None], ...]] = (
    init.register,
    account.register,
    manage.register,
    agent.register,
    model.register,
    node.register,
    key.register,
    pack.register,
    dns.register,
    credits.register,
)


def _parser() -> argparse.ArgumentParser:
    parser, commands = _root_parser(_DESCRIPTION, __version__)
    for register in _GROUPS:
        register(commands)
    return parser


def main(
    argv: Sequence[str] | None = None,
    *,
    transport: httpx.BaseTransport | None = None,
    clock: Callable[[], float] = time.time,
) -> int:
    """Run ``form`` with ``argv``; returns the exit status. ``transport``/``clock`` for tests."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error argparse printed
        return exc.code if isinstance(exc.code, int) else 2
    session = _Session(args, transport, clock, _KEYSTORE_KW)
    try:
        status: int = args.func(session)
    except (ClientError, UsageError, KeystoreError, FileExistsError, FileNotFoundError) as exc:
        return _report(exc)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`form agent list | head -1`): not an error worth a traceback.
        # Python flushes stdout again at exit; point it at /dev/null so that cannot fail too.
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return 128 + signal.SIGPIPE  # what a shell reports for a writer killed by SIGPIPE
    finally:
        session.close()
    return status
