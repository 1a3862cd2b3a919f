"""Rule state in Redis: the kernel state after every bar, written atomically with that bar's signals.

Keys live under `<root><account>:<strategy>:<mode>:` so runners on other accounts, strategies or
modes never collide: `state` (the exact bytes of the kernel state), `bar` (epoch seconds of
the last decided bar start), `decisions` (one stream entry per bar: codes, scores, kernel fills),
`signals.raw` (one entry per decision, SPEC §9) and `status` (a hash for `python -m live status`).
One Lua script checks that the bar is newer than the last decided one and writes all of them, so a
crash can never leave a state without its signals, and a bar already decided is never decided again.
The status summary follows on the same connection, kept only if its bar was stored.
The kill switch is per account: `<root><account>:kill`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis

from tierlab.errors import ConfigError

SIGNALS = "signals.raw"
GROUP = "executor"

_COMMIT = """
local last = tonumber(redis.call('GET', KEYS[2]) or '-1')
if last >= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('SET', KEYS[2], ARGV[1])
redis.call('XADD', KEYS[3], '*', 'bar', ARGV[1], 'rec', ARGV[3])
local sigs = cjson.decode(ARGV[4])
for i = 1, #sigs do
  redis.call('XADD', KEYS[4], '*', unpack(sigs[i]))
end
redis.call('HSET', KEYS[5], 'bar', ARGV[1], 'writer', ARGV[5])
return 1
"""

# the status summary of a bar, written only if this writer's commit of that bar was stored (the view of a
# bar refused because another life stored it never shows)
_STATUS = """
local h = redis.call('HMGET', KEYS[1], 'bar', 'writer')
if h[1] ~= ARGV[1] or h[2] ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'summary', ARGV[3])
return 1
"""


def commit_args(bar_epoch: int, state_blob: bytes, record: dict[str, Any],
                signals: Sequence[dict[str, Any]]) -> list[Any]:
    """The commit script's arguments: bar, state bytes, the bar's record and its signals (field/value lists)."""
    flat = [[x for k, v in s.items() for x in (k, "" if v is None else str(v))] for s in signals]
    return [bar_epoch, state_blob, json.dumps(record, separators=(",", ":")), json.dumps(flat, separators=(",", ":"))]


@dataclass(frozen=True)
class Keys:
    """The Redis keys of one (account, strategy, mode)."""

    prefix: str
    account_prefix: str

    @classmethod
    def of(cls, account: str, strategy: str, mode: str, root: str = "tierlab:") -> Keys:
        """Keys under `<root><account>:<strategy>:<mode>:`."""
        for name, v in (("account", account), ("strategy", strategy), ("mode", mode)):
            if not v or any(c in v for c in ": \n"):
                raise ConfigError(f"{name} must be a non-empty word without ':' or spaces, got {v!r}")
        return cls(f"{root}{account}:{strategy}:{mode}:", f"{root}{account}:")

    @property
    def state(self) -> str:
        """Kernel state bytes."""
        return self.prefix + "state"

    @property
    def bar(self) -> str:
        """Epoch seconds of the last decided bar start."""
        return self.prefix + "bar"

    @property
    def decisions(self) -> str:
        """Stream: one entry per decided bar."""
        return self.prefix + "decisions"

    @property
    def signals(self) -> str:
        """Stream `signals.raw`: one entry per decision."""
        return self.prefix + SIGNALS

    @property
    def status(self) -> str:
        """Hash: last bar and the summary shown by `python -m live status`."""
        return self.prefix + "status"

    @property
    def sent(self) -> str:
        """Stream: what the executor did with each order signal (for reports and status)."""
        return self.prefix + "orders.sent"

    @property
    def kill(self) -> str:
        """The account's kill switch (any value stops every runner on the account)."""
        return self.account_prefix + "kill"

    @property
    def tokens(self) -> str:
        """Prefix of the account's shared token buckets."""
        return self.account_prefix + "tokens:"


class RedisState:
    """Load and commit the runner's state through one atomic Lua script."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.r = client
        self.keys = keys
        self._commit = client.register_script(_COMMIT)
        self._conn: Any = None  # the connection `send_commit` pipelines on (made on first use)
        self._sent: list[Sequence[Any]] = []
        self._statuses = 0  # status writes sent behind the commit, not answered yet
        self._status_cmds: list[tuple[Any, ...]] = []  # those of the commit in flight
        k = keys
        self._commit_keys = (k.state, k.bar, k.decisions, k.signals, k.status)
        self.writer = uuid.uuid4().hex  # names this life's commits in the status hash (see _STATUS)

    def load(self) -> tuple[bytes | None, int]:
        """(state bytes or None, last decided bar start in epoch seconds or -1)."""
        pipe = self.r.pipeline(transaction=True)
        pipe.get(self.keys.state)
        pipe.get(self.keys.bar)
        blob, bar = pipe.execute()
        return blob, int(bar) if bar is not None else -1

    def send_commit(self, args: Sequence[Any]) -> None:
        """Send one commit (`commit_args`) on a connection of its own without waiting for the answer.

        One commit is in flight at a time (`read_commit` takes its answer before the next is sent).
        Lets the runner decide the next minute of a catch-up while Redis stores the last one.
        """
        if self._sent:  # one in flight: a lost script cache (NoScriptError) is then answered unambiguously
            raise RuntimeError("send_commit: the previous commit is not answered yet (read_commit first)")
        if self._conn is None:
            self._conn = self.r.connection_pool.make_connection()
        self._write("EVALSHA", self._commit.sha, len(self._commit_keys), *self._commit_keys, *args, self.writer)
        self._sent.append(args)
        self._status_cmds = []

    def send_status(self, summary: dict[str, Any]) -> None:
        """Write the status summary of the commit in flight right behind it, without waiting: a view, not
        the record, computed while Redis runs the commit (off the path from bar to signals), and kept
        only if that commit was stored (EVAL: a lost script cache cannot refuse it)."""
        if not self._sent:
            raise RuntimeError("send_status: no commit in flight")
        cmd = ("EVAL", _STATUS, 1, self.keys.status, self._sent[0][0], self.writer, json.dumps(summary, default=str))
        self._write(*cmd)
        self._statuses += 1
        self._status_cmds.append(cmd)  # sent again behind the commit if Redis lost its script cache

    def _write(self, *command: Any) -> None:
        """One command in one write (redis-py writes a large argument apart: a system call each)."""
        try:
            self._conn.send_packed_command([b"".join(self._conn.pack_command(*command))])
        except BaseException:
            self._conn.disconnect()
            raise

    def read_commit(self) -> bool:
        """The answer of the commit in flight (and of the status behind it): False when its bar was already
        decided."""
        assert self._conn is not None and self._sent
        try:
            try:
                ok = self._conn.read_response()
            except redis.exceptions.NoScriptError:  # Redis restarted and lost its script cache: load, send again
                self._read_statuses()  # their answers come before the new one (refused: the bar was not stored)
                self.r.script_load(_COMMIT)
                self._write("EVALSHA", self._commit.sha, len(self._commit_keys), *self._commit_keys, *self._sent[0],
                            self.writer)
                for cmd in self._status_cmds:  # and the status again, behind it
                    self._write(*cmd)
                    self._statuses += 1
                ok = self._conn.read_response()
            self._read_statuses()
        except (redis.ConnectionError, redis.TimeoutError):
            self._conn.disconnect()
            self._statuses = 0  # lost with the connection: the next bar writes a newer one
            raise
        self._sent.pop(0)
        return bool(ok)

    def _read_statuses(self) -> None:
        while self._statuses:
            self._statuses -= 1
            self._conn.read_response()

    def unanswered(self) -> list[Sequence[Any]]:
        """Commits sent whose answers were lost with the connection (the caller sends them again); clears them."""
        out, self._sent = self._sent, []
        self._statuses = 0
        return out

    def ensure_group(self) -> None:
        """Create the executor's consumer group on `signals.raw` (from the stream's start) if missing."""
        try:
            self.r.xgroup_create(self.keys.signals, GROUP, id="0", mkstream=True)
        except redis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    def executor_idle(self) -> bool:
        """True when the executor has read and acknowledged every signal (nothing lagging or pending)."""
        def sid(x: Any) -> tuple[int, int]:
            a, b = (x.decode() if isinstance(x, bytes) else str(x)).split("-")
            return int(a), int(b)

        pipe = self.r.pipeline(transaction=False)
        pipe.xinfo_groups(self.keys.signals)
        pipe.xinfo_stream(self.keys.signals)
        groups, stream = pipe.execute()
        for g in groups:
            name = g["name"].decode() if isinstance(g["name"], bytes) else g["name"]
            if name == GROUP:  # `lag` is unknown after a restart: compare ids instead
                return int(g.get("pending", 0)) == 0 and sid(g["last-delivered-id"]) >= sid(
                    stream["last-generated-id"])
        return False

    def killed(self) -> bool:
        """True when the account's kill switch is set."""
        return bool(self.r.exists(self.keys.kill))

    def decisions(self) -> list[dict[str, Any]]:
        """Every decided bar's record, oldest first."""
        return [json.loads(f[b"rec"]) for _, f in self.r.xrange(self.keys.decisions)]

    def signals(self) -> list[dict[str, str]]:
        """Every signal entry, oldest first (field names and values as text)."""
        return [{k.decode(): v.decode() for k, v in f.items()} for _, f in self.r.xrange(self.keys.signals)]

    def delete_all(self) -> None:
        """Remove this (account, strategy, mode)'s keys (tests and fresh replays only)."""
        k = self.keys
        self.r.delete(k.state, k.bar, k.decisions, k.signals, k.status, k.sent)
        for key in self.r.scan_iter(match=k.prefix + "llm:*", count=1000):  # the LLM gate's cache and counters
            self.r.delete(key)
