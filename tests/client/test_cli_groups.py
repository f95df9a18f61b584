"""``form``'s command groups: every group module under ``node/client/cli/`` is in ``_GROUPS``,
so a new group cannot be written and then silently left out of ``form``."""

import pkgutil

from node.client import cli


def test_every_group_module_is_registered() -> None:
    modules = {m.name for m in pkgutil.iter_modules(cli.__path__) if not m.name.startswith("_")}
    registered = {register.__module__.rsplit(".", 1)[-1] for register in cli._GROUPS}
    assert registered == modules
    assert len(cli._GROUPS) == len(registered)  # none listed twice
