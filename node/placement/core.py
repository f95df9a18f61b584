"""Where an instance's slot runs: power-of-d choices over the nodes that fit, the host decides.

Theory of operation
-------------------
There is no scheduler that knows every node's capacity. Each node reports what it has free
(``node.capacity``, with heartbeats), so every node holds a *view*: node id -> free
``Resources`` as last reported. The view lags: a report is a heartbeat old plus the gossip
delay, and other placements are landing on the same hosts meanwhile. So the view only
*proposes*; it never decides.

**The host is the only authority over its own capacity** (late binding, as in Sparrow, Ousterhout
et al., SOSP 2013). ``HostBook`` is a host's ledger of the slots it holds. ``offer(key, need)``
accepts iff the need fits what is free right now and commits it in the same call. A host
answers offers one at a time (the driver calls it from one task), so two asks racing for the
last room on a host never both win: the first commits, the second sees the smaller free and
is refused. An offer is idempotent by key: the same ask delivered twice (a retransmission, a
replayed op) answers "accepted" again and holds the room once. A refusal carries the host's
true free, so the asker learns something better than its view.

``SlotPlacement`` is one slot's placement, sans-I/O like h11/aioquic: the driver feeds it the
view, the time and an rng, and it returns what to do next (``Ask`` a host, ``Done``, ``Fail``).

1. ``start``: pick a host (below), return ``Ask(host, attempt)``.
2. ``on_answer``: accepted -> ``Done``. Refused -> the host's reported free replaces its view
   entry for the rest of this placement, and the next candidate is asked. An answer that is not
   for the outstanding ask (late, duplicated, from a host it gave up on) returns None; if it was
   an acceptance the driver should release that key on that host (it holds room nobody uses).
3. ``on_timer``: an ask unanswered for ``answer_timeout_ms`` counts as lost (the host may be
   dead or cut off); the next candidate is asked. The driver should also release the key on
   the silent host, in case the acceptance was what got lost.
4. A host is never asked twice by one placement; after ``attempts_max`` asks, or when no host in
   the view fits, the result is ``Fail`` whose message names the need and the largest free slot
   the placement knows of, so the user sees how far off the request is.

**Choosing a host** (``rank``, and ``SlotPlacement`` through the same ``_choose``): among the
nodes whose free fits the need, sample ``choices`` uniformly at random and take the best of
them by policy: ``spread`` (most vCPU, then memory, left after placing: load spreads out, fewer
refusals under stale views) or ``binpack`` (least left: big holes stay free for big requests).
Power of d choices (Mitzenmacher 2001): with d = 2 the most loaded host's excess drops from
log n / log log n to log log n / log d, while the asks stay random enough that two placers with
the same stale view rarely pick the same host (a deterministic "best host" would send every
placer to it at once, the herd that late binding then has to refuse). Both policies avoid a
GPU host for a request without GPUs when they can (GPUs are the scarce dimension).

Sampling is done by drawing random view entries and keeping the ones that fit (uniform over the
fitting nodes, as a scan then a sample would be), so a 1,000-node view costs a few lookups per
placement; when the draws find fewer than ``choices`` fitting nodes, a full scan decides (so a
node that fits is never missed). ``rank`` returns every fitting node: the pick first, the rest
in policy order (ties by node id).

Bounds: ``attempts_max`` <= ``ATTEMPTS_MAX_LIMIT``, ``choices`` <= ``CHOICES_MAX``, a
``HostBook`` holds at most ``slots_max`` slots, keys are at most ``KEY_CHARS_MAX`` characters,
and a placement's overrides hold at most one entry per ask. Nothing here reads a clock or a
global rng: ``now_ms`` and ``rng`` come from the caller.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "ATTEMPTS_MAX_LIMIT",
    "CHOICES_MAX",
    "KEY_CHARS_MAX",
    "POLICIES",
    "Answer",
    "Ask",
    "Done",
    "Fail",
    "HostBook",
    "Resources",
    "SlotPlacement",
    "largest_free",
    "rank",
]

POLICIES: Final = ("spread", "binpack")
ATTEMPTS_MAX_LIMIT: Final = 64
CHOICES_MAX: Final = 16
KEY_CHARS_MAX: Final = 128
# One dimension's bound: far above any machine (2**31 MB is 2 PB), low enough to catch garbage.
_AMOUNT_MAX: Final = 2**31 - 1
_FIELDS: Final = ("vcpus", "memory_mb", "disk_gb", "gpus")


@dataclass(frozen=True, slots=True)
class Resources:
    """An amount of each dimension a VM needs or a host has (whole units)."""

    vcpus: int = 0
    memory_mb: int = 0
    disk_gb: int = 0
    gpus: int = 0

    def fits(self, free: Resources) -> bool:
        """True if every dimension of ``self`` is at most ``free``'s."""
        return (
            self.vcpus <= free.vcpus
            and self.memory_mb <= free.memory_mb
            and self.disk_gb <= free.disk_gb
            and self.gpus <= free.gpus
        )

    def __add__(self, other: Resources) -> Resources:
        return Resources(
            self.vcpus + other.vcpus,
            self.memory_mb + other.memory_mb,
            self.disk_gb + other.disk_gb,
            self.gpus + other.gpus,
        )

    def __sub__(self, other: Resources) -> Resources:
        # May go negative: an over-committed report is the caller's to interpret.
        return Resources(
            self.vcpus - other.vcpus,
            self.memory_mb - other.memory_mb,
            self.disk_gb - other.disk_gb,
            self.gpus - other.gpus,
        )

    def is_valid(self) -> bool:
        """Every dimension an int in [0, 2**31)."""
        return all(
            type(v) is int and 0 <= v <= _AMOUNT_MAX
            for v in (self.vcpus, self.memory_mb, self.disk_gb, self.gpus)
        )

    def to_json(self) -> dict[str, int]:
        return {
            "vcpus": self.vcpus,
            "memory_mb": self.memory_mb,
            "disk_gb": self.disk_gb,
            "gpus": self.gpus,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Resources:
        """Missing keys are 0, None is zero; anything but whole numbers >= 0 is a ValueError."""
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise ValueError(
                f"resources must be an object such as {{'vcpus': 2, 'memory_mb': 4096}}, "
                f"not {type(data).__name__}"
            )
        unknown = sorted(str(k) for k in data if k not in _FIELDS)
        if unknown:
            raise ValueError(
                f"resources have unknown key(s) {', '.join(unknown)}; use {', '.join(_FIELDS)}"
            )
        values: dict[str, int] = {}
        for name in _FIELDS:
            value = data.get(name, 0)
            if type(value) is not int or not 0 <= value <= _AMOUNT_MAX:
                raise ValueError(f"resources.{name} = {value!r}: use a whole number >= 0")
            values[name] = value
        return cls(**values)

    def describe(self) -> str:
        """``"2 vCPU, 4096 MB, 10 GB"`` (``", 1 GPU"`` added when it has GPUs)."""
        text = f"{self.vcpus} vCPU, {self.memory_mb} MB, {self.disk_gb} GB"
        if self.gpus:
            text += f", {self.gpus} GPU" + ("s" if self.gpus != 1 else "")
        return text


_ZERO: Final = Resources()


def _short_of(need: Resources, free: Resources) -> str:
    names = ("vCPU", "memory", "disk", "GPU")
    return ", ".join(
        name for name, n, f in zip(names, _tuple(need), _tuple(free), strict=True) if n > f
    )


def _tuple(r: Resources) -> tuple[int, int, int, int]:
    return (r.vcpus, r.memory_mb, r.disk_gb, r.gpus)


@dataclass(frozen=True, slots=True)
class Answer:
    """A host's answer to an offer: accepted or not, and what it has free after it."""

    accepted: bool
    free: Resources
    reason: str = ""


class HostBook:
    """A host's own, and only, record of the slots it holds against its capacity.

    Call it from one task: answering one offer at a time is what makes "two asks never both
    win the last room" true.
    """

    __slots__ = ("_committed", "_held", "slots_max", "total")

    def __init__(self, total: Resources, *, slots_max: int = 4096) -> None:
        if not isinstance(total, Resources) or not total.is_valid():
            raise ValueError(f"HostBook total {total!r}: use Resources of whole numbers >= 0")
        if type(slots_max) is not int or slots_max < 1:
            raise ValueError(f"HostBook slots_max = {slots_max!r}: use an integer >= 1")
        self.total = total
        self.slots_max = slots_max
        self._held: dict[str, Resources] = {}
        self._committed = _ZERO

    @property
    def committed(self) -> Resources:
        return self._committed

    @property
    def free(self) -> Resources:
        return self.total - self._committed

    def offer(self, key: str, need: Resources) -> Answer:
        """Commit ``need`` under ``key`` iff it fits what is free now; idempotent by key."""
        if not isinstance(key, str) or not 0 < len(key) <= KEY_CHARS_MAX:
            return Answer(False, self.free, f"slot key {key!r}: use 1-{KEY_CHARS_MAX} characters")
        if not isinstance(need, Resources) or not need.is_valid():
            return Answer(False, self.free, f"need {need!r}: use whole numbers >= 0")
        held = self._held.get(key)
        if held is not None:
            if held == need:
                return Answer(True, self.free, "already held")
            return Answer(
                False,
                self.free,
                f"slot {key} is already held for {held.describe()}, not {need.describe()}",
            )
        free = self.free
        if not need.fits(free):
            return Answer(
                False,
                free,
                f"needs {need.describe()}; free {free.describe()} (short of {_short_of(need, free)})",
            )
        if len(self._held) >= self.slots_max:
            return Answer(False, free, f"holds {self.slots_max} slots, its most")
        self._held[key] = need
        self._committed = self._committed + need
        return Answer(True, self.free)

    def release(self, key: str) -> bool:
        """Free the slot held under ``key``; False if none was (releasing twice is harmless)."""
        need = self._held.pop(key, None)
        if need is None:
            return False
        self._committed = self._committed - need
        return True

    def holds(self, key: str) -> bool:
        return key in self._held

    def keys(self) -> list[str]:
        return list(self._held)

    def need_of(self, key: str) -> Resources | None:
        return self._held.get(key)


# -- choosing ------------------------------------------------------------------------------


def _check_policy(policy: str, choices: int) -> None:
    if policy not in POLICIES:
        raise ValueError(f"placement policy {policy!r}: use one of {', '.join(POLICIES)}")
    if type(choices) is not int or not 1 <= choices <= CHOICES_MAX:
        raise ValueError(f"placement choices = {choices!r}: use an integer in 1..{CHOICES_MAX}")


def _score(free: Resources, need: Resources, policy: str) -> tuple[int, int, int, int]:
    """Lower is better. GPUs a request without GPUs would sit on count first."""
    gpus_idle = free.gpus - need.gpus if need.gpus == 0 else 0
    vcpus, memory, disk = free.vcpus - need.vcpus, free.memory_mb - need.memory_mb, free.disk_gb
    if policy == "spread":
        return (gpus_idle, -vcpus, -memory, -disk)
    return (gpus_idle, vcpus, memory, disk)


def _choose(
    view: Mapping[str, Resources],
    need: Resources,
    rng: random.Random,
    policy: str,
    choices: int,
    exclude: Collection[str],
) -> str | None:
    """The power-of-``choices`` pick among the view's nodes that fit (None: none fits)."""
    ids = list(view)
    n = len(ids)
    draws = 4 * choices + 4
    picks: list[str] = []
    if n > 2 * draws:
        seen: set[str] = set()
        for _ in range(draws):
            node = ids[rng.randrange(n)]
            if node in seen:
                continue
            seen.add(node)
            if node not in exclude and need.fits(view[node]):
                picks.append(node)
                if len(picks) == choices:
                    break
    if len(picks) < choices:
        # Few fit (or a small view): scan. Uniform over the fitting nodes, like the draws.
        fitting = [i for i in ids if i not in exclude and need.fits(view[i])]
        if not fitting:
            return None
        picks = rng.sample(fitting, min(choices, len(fitting)))
    best = picks[0]
    best_score = _score(view[best], need, policy)
    for node in picks[1:]:
        score = _score(view[node], need, policy)
        if score < best_score:
            best, best_score = node, score
    return best


def rank(
    view: Mapping[str, Resources],
    need: Resources,
    *,
    rng: random.Random,
    policy: str = "spread",
    choices: int = 2,
    exclude: Collection[str] = (),
) -> list[str]:
    """Node ids whose free fits ``need`` (minus ``exclude``): the power-of-d pick first, then
    the rest in policy order (ties by node id)."""
    _check_policy(policy, choices)
    excluded = frozenset(exclude)
    first = _choose(view, need, rng, policy, choices, excluded)
    if first is None:
        return []
    rest = [i for i in view if i != first and i not in excluded and need.fits(view[i])]
    rest.sort(key=lambda i: (_score(view[i], need, policy), i))
    return [first, *rest]


def largest_free(
    view: Mapping[str, Resources], exclude: Collection[str] = ()
) -> tuple[str, Resources] | None:
    """The node with the most free (vCPU, then memory, disk, GPUs; ties: lowest id), or None."""
    best: tuple[str, Resources] | None = None
    best_key: tuple[int, int, int, int] = (0, 0, 0, 0)
    for node, free in view.items():
        if node in exclude:
            continue
        key = _tuple(free)
        if best is None or key > best_key or (key == best_key and node < best[0]):
            best, best_key = (node, free), key
    return best


# -- one slot's placement ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ask:
    """Send an offer for this slot to ``host``, numbered ``attempt``."""

    host: str
    attempt: int


@dataclass(frozen=True, slots=True)
class Done:
    """``host`` accepted the slot (on ask ``attempt``): it runs there."""

    host: str
    attempt: int


@dataclass(frozen=True, slots=True)
class Fail:
    """No host took the slot; ``message`` says why and names the largest free slot known."""

    message: str
    largest_free: tuple[str, Resources] | None
    tried: tuple[str, ...]


def _short_id(node: str) -> str:
    return node if len(node) <= 12 else node[:10] + "…"


class _Overlay(Mapping[str, Resources]):
    """The view with the free that refusing hosts reported laid over it."""

    __slots__ = ("_base", "_over")

    def __init__(self, base: Mapping[str, Resources], over: dict[str, Resources]) -> None:
        self._base = base
        self._over = over

    def __getitem__(self, node: str) -> Resources:
        got = self._over.get(node)
        return got if got is not None else self._base[node]

    def __iter__(self) -> Iterator[str]:
        return iter(self._base)

    def __len__(self) -> int:
        return len(self._base)


class SlotPlacement:
    """One slot's placement: ask hosts one at a time until one accepts (module docstring)."""

    def __init__(
        self,
        key: str,
        need: Resources,
        *,
        attempt_first: int = 1,
        attempts_max: int = 5,
        answer_timeout_ms: int = 5_000,
        policy: str = "spread",
        choices: int = 2,
        exclude: Collection[str] = (),
    ) -> None:
        if not isinstance(key, str) or not 0 < len(key) <= KEY_CHARS_MAX:
            raise ValueError(f"slot key {key!r}: use 1-{KEY_CHARS_MAX} characters")
        if not isinstance(need, Resources) or not need.is_valid():
            raise ValueError(f"slot need {need!r}: use Resources of whole numbers >= 0")
        if type(attempt_first) is not int or attempt_first < 1:
            raise ValueError(f"attempt_first = {attempt_first!r}: use an integer >= 1")
        if type(attempts_max) is not int or not 1 <= attempts_max <= ATTEMPTS_MAX_LIMIT:
            raise ValueError(
                f"attempts_max = {attempts_max!r}: use an integer in 1..{ATTEMPTS_MAX_LIMIT}"
            )
        if type(answer_timeout_ms) is not int or answer_timeout_ms < 1:
            raise ValueError(f"answer_timeout_ms = {answer_timeout_ms!r}: use an integer >= 1")
        _check_policy(policy, choices)
        self.key = key
        self.need = need
        self.attempt_first = attempt_first
        self.attempts_max = attempts_max
        self.answer_timeout_ms = answer_timeout_ms
        self.policy = policy
        self.choices = choices
        self._exclude = frozenset(exclude)
        self._tried: list[str] = []
        self._over: dict[str, Resources] = {}
        self._pending: tuple[str, int, int] | None = None  # host, attempt, deadline_ms
        self._started = False
        self.result: Done | Fail | None = None
        self.refusals = 0
        self.retries = 0
        self.timeouts = 0

    @property
    def attempt(self) -> int:
        """The number of the latest ask (``attempt_first - 1`` before the first)."""
        return self.attempt_first + len(self._tried) - 1

    @property
    def tried(self) -> tuple[str, ...]:
        return tuple(self._tried)

    @property
    def next_wakeup_ms(self) -> int | None:
        """When ``on_timer`` has something to do: the outstanding ask's deadline."""
        return self._pending[2] if self._pending is not None else None

    def start(self, view: Mapping[str, Resources], now_ms: int, rng: random.Random) -> Ask | Fail:
        if self._started:
            raise RuntimeError(f"placement of {self.key} was already started")
        self._started = True
        return self._next(view, now_ms, rng)

    def on_answer(
        self,
        host: str,
        attempt: int,
        accepted: bool,
        free: Resources,
        view: Mapping[str, Resources],
        now_ms: int,
        rng: random.Random,
    ) -> Ask | Done | Fail | None:
        """The host's answer to ask ``attempt``; None if it is not the outstanding ask's."""
        pending = self._pending
        if pending is None or pending[0] != host or pending[1] != attempt:
            return None
        self._pending = None
        if accepted:
            done = Done(host, attempt)
            self.result = done
            return done
        self.refusals += 1
        if isinstance(free, Resources) and free.is_valid():
            # What the host itself says beats what its last report said.
            self._over[host] = free
        return self._retry(view, now_ms, rng)

    def on_timer(
        self, now_ms: int, view: Mapping[str, Resources], rng: random.Random
    ) -> Ask | Fail | None:
        """An ask unanswered past its deadline counts as lost: ask the next host."""
        pending = self._pending
        if pending is None or now_ms < pending[2]:
            return None
        self._pending = None
        self.timeouts += 1
        return self._retry(view, now_ms, rng)

    def _retry(self, view: Mapping[str, Resources], now_ms: int, rng: random.Random) -> Ask | Fail:
        out = self._next(view, now_ms, rng)
        if isinstance(out, Ask):
            self.retries += 1
        return out

    def _next(self, view: Mapping[str, Resources], now_ms: int, rng: random.Random) -> Ask | Fail:
        merged: Mapping[str, Resources] = _Overlay(view, self._over) if self._over else view
        if len(self._tried) >= self.attempts_max:
            return self._fail(merged, f" after {len(self._tried)} asks")
        exclude = self._exclude.union(self._tried) if self._tried else self._exclude
        host = _choose(merged, self.need, rng, self.policy, self.choices, exclude)
        if host is None:
            return self._fail(merged, "")
        self._tried.append(host)
        attempt = self.attempt
        self._pending = (host, attempt, now_ms + self.answer_timeout_ms)
        return Ask(host, attempt)

    def _fail(self, view: Mapping[str, Resources], after: str) -> Fail:
        largest = largest_free(view, self._exclude)
        if largest is None:
            message = "no node offers VMs"
        else:
            node, free = largest
            message = (
                f"no node has room for {self.need.describe()}{after}; the largest free slot is "
                f"{free.describe()} on node {_short_id(node)}"
            )
        fail = Fail(message, largest, tuple(self._tried))
        self.result = fail
        return fail
