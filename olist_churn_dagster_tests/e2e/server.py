"""A real `dg dev` for the end-to-end tests: start, wait, talk GraphQL, stop cleanly.

Nothing here imports the code location: the server loads it in its own processes, with
the environment given to `DagsterDev.start`, exactly as `make run` does.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from olist_churn_dagster.stack.servers import wait_until

FINISHED_RUN_STATUSES = frozenset({"SUCCESS", "FAILURE", "CANCELED"})
FINISHED_BACKFILL_STATUSES = frozenset(
    {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}
)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class GraphQLError(AssertionError):
    """The server answered a GraphQL request with errors."""


@dataclass
class GraphQL:
    """A minimal client for the webserver's `/graphql` endpoint."""

    url: str
    timeout: float = 30.0

    def __call__(self, query: str, variables: Mapping[str, Any] | None = None) -> dict[str, Any]:
        body = json.dumps({"query": query, "variables": dict(variables or {})}).encode()
        request = urllib.request.Request(
            f"{self.url}/graphql",
            data=body,
            headers={"Content-Type": "application/json", "Accept": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                payload = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise GraphQLError(f"HTTP {exc.code} from /graphql: {exc.read()[:2000]!r}") from exc
        if payload.get("errors"):
            raise GraphQLError(f"GraphQL errors: {json.dumps(payload['errors'], indent=1)}")
        return payload["data"]


RUN_FIELDS = """
    runId jobName status creationTime startTime endTime
    tags { key value }
    assetSelection { path }
    allPools
    stepStats { stepKey status startTime endTime }
"""

RUNS_QUERY = (
    """
query Runs($filter: RunsFilter) {
  runsOrError(filter: $filter) {
    __typename
    ... on Runs { results { """
    + RUN_FIELDS
    + """ } }
    ... on PythonError { message stack }
  }
}
"""
)

LAUNCH_BACKFILL = """
mutation Launch($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message stack }
    ... on PartitionKeysNotFoundError { message partitionKeys }
    ... on InvalidSubsetError { message }
    ... on UnauthorizedError { message }
  }
}
"""

BACKFILL_QUERY = """
query Backfill($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill {
      id status numPartitions partitionNames
      error { message }
    }
    ... on PythonError { message stack }
    ... on BackfillNotFoundError { message }
  }
}
"""


def query_warehouse(path: Path, sql: str, params: list[Any], *, timeout: float = 60.0) -> Any:
    """One row from the warehouse, opened read-only; retries while a run holds the lock."""
    import duckdb

    def attempt() -> tuple[Any, ...] | None:
        try:
            conn = duckdb.connect(str(path), read_only=True)
        except duckdb.IOException as exc:
            if "lock" in str(exc).lower():
                return None
            raise
        try:
            return conn.execute(sql, params).fetchone()
        finally:
            conn.close()

    return wait_until(f"a read-only look at {path.name}", attempt, timeout=timeout)


def tags_of(run: Mapping[str, Any]) -> dict[str, str]:
    return {tag["key"]: tag["value"] for tag in run["tags"]}


def runs(gql: GraphQL, **run_filter: Any) -> list[dict[str, Any]]:
    """Runs matching a RunsFilter given as keyword arguments (tags as a dict)."""
    if "tags" in run_filter:
        run_filter["tags"] = [{"key": k, "value": v} for k, v in run_filter["tags"].items()]
    answer = gql(RUNS_QUERY, {"filter": run_filter})["runsOrError"]
    assert answer["__typename"] == "Runs", answer
    return answer["results"]


LAUNCH_RUN = """
mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message stack }
    ... on InvalidSubsetError { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}
"""


def launch_job(gql: GraphQL, job_name: str, location: str = "olist_churn_dagster") -> str:
    """Submit a run of a job of the code location (it goes through the run queue)."""
    selector = {
        "repositoryLocationName": location,
        "repositoryName": "__repository__",
        "jobName": job_name,
    }
    answer = gql(LAUNCH_RUN, {"params": {"selector": selector, "runConfigData": {}}})
    launched = answer["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    return launched["run"]["runId"]


def asset_backfill_params(
    asset_paths: list[list[str]], partition_keys: list[str], title: str | None = None
) -> dict[str, Any]:
    """`LaunchBackfillParams` as the UI's *Materialize* of partitioned assets sends them
    (assets and partition names, no job selector, not from a failure, no tags), with an
    optional title."""
    params: dict[str, Any] = {
        "assetSelection": [{"path": path} for path in asset_paths],
        "partitionNames": partition_keys,
        "fromFailure": False,
        "tags": [],
    }
    if title is not None:
        params["title"] = title
    return params


def launch_asset_backfill(
    gql: GraphQL, asset_paths: list[list[str]], partition_keys: list[str], title: str | None = None
) -> str:
    params = asset_backfill_params(asset_paths, partition_keys, title)
    answer = gql(LAUNCH_BACKFILL, {"params": params})["launchPartitionBackfill"]
    assert answer["__typename"] == "LaunchBackfillSuccess", answer
    return answer["backfillId"]


def launch_asset_backfills(
    gql: GraphQL, asset_paths: list[list[str]], ranges: list[list[str]], title: str
) -> list[str]:
    """Several backfills in one request, so that the daemon finds them all at once."""
    fields = "\n".join(
        f"""  b{i}: launchPartitionBackfill(backfillParams: $p{i}) {{
    __typename
    ... on LaunchBackfillSuccess {{ backfillId }}
    ... on PythonError {{ message }}
  }}"""
        for i in range(len(ranges))
    )
    params = ", ".join(f"$p{i}: LaunchBackfillParams!" for i in range(len(ranges)))
    variables = {
        f"p{i}": asset_backfill_params(asset_paths, keys, f"{title} {i}")
        for i, keys in enumerate(ranges)
    }
    answer = gql(f"mutation Launch({params}) {{\n{fields}\n}}", variables)
    results = [answer[f"b{i}"] for i in range(len(ranges))]
    assert all(r["__typename"] == "LaunchBackfillSuccess" for r in results), results
    return [r["backfillId"] for r in results]


def backfill(gql: GraphQL, backfill_id: str) -> dict[str, Any]:
    answer = gql(BACKFILL_QUERY, {"id": backfill_id})["partitionBackfillOrError"]
    assert answer["__typename"] == "PartitionBackfill", answer
    return answer


def wait_backfill(gql: GraphQL, backfill_id: str, *, timeout: float) -> dict[str, Any]:
    """Wait until the backfill is finished (whatever the outcome) and return it."""

    def probe() -> dict[str, Any] | None:
        state = backfill(gql, backfill_id)
        return state if state["status"] in FINISHED_BACKFILL_STATUSES else None

    return wait_until(
        f"backfill {backfill_id}",
        probe,
        timeout=timeout,
        interval=2.0,
        detail=lambda: f"last state: {backfill(gql, backfill_id)}",
    )


def wait_runs_finished(
    gql: GraphQL, what: str, *, timeout: float, expect: int = 1, **run_filter: Any
) -> list[dict[str, Any]]:
    """Wait for at least `expect` runs matching the filter, all of them finished."""

    def probe_all() -> list[dict[str, Any]]:
        return runs(gql, **dict(run_filter))

    def probe() -> list[dict[str, Any]] | None:
        found = probe_all()
        done = len(found) >= expect and all(r["status"] in FINISHED_RUN_STATUSES for r in found)
        return found if done else None

    return wait_until(
        what,
        probe,
        timeout=timeout,
        interval=1.0,
        detail=lambda: f"runs now: {[(r['runId'], r['status']) for r in probe_all()]}",
    )


def run_failure_text(gql: GraphQL, run_id: str) -> str:
    """The error messages of a run's failure events, for assertion messages."""
    query = """
    query Logs($runId: ID!) {
      logsForRun(runId: $runId, limit: 2000) {
        ... on EventConnection { events {
          __typename
          ... on MessageEvent { message }
          ... on ExecutionStepFailureEvent { error { message } }
          ... on RunFailureEvent { message }
        } }
      }
    }
    """
    events = gql(query, {"runId": run_id})["logsForRun"].get("events", [])
    lines = []
    for event in events:
        if "Failure" in event["__typename"] or event.get("error"):
            error = (event.get("error") or {}).get("message", "")
            lines.append(f"{event['__typename']}: {event.get('message', '')} {error}".strip())
    return "\n".join(lines) or "(no failure events)"


@dataclass
class DagsterDev:
    """`dg dev` as a subprocess in its own process group: by default the server
    itself, or any `command` that ends up serving the UI on `port` (e.g. `make run`)."""

    repo_root: Path
    env: dict[str, str]
    log_path: Path
    host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    command: list[str] | None = None
    # SIGINT is what Ctrl-C sends a terminal's foreground group (`make run` says so).
    stop_signal: signal.Signals = signal.SIGTERM
    process: subprocess.Popen[bytes] | None = None
    killed: bool = False  # whether `stop` had to SIGKILL what the stop signal left

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def argv(self) -> list[str]:
        """The command started: `command` when given, else `dg dev` on the port, as
        `make run` starts it (the code location from pyproject's [tool.dg])."""
        if self.command is not None:
            return list(self.command)
        dg_cli = self.repo_root / ".venv" / "bin" / "dg"
        return [str(dg_cli), "dev", "-h", self.host, "-p", str(self.port)]

    def start(self) -> None:
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            self.argv(),
            cwd=self.repo_root,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so teardown reaches every child
        )

    def log_tail(self, lines: int = 60) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def _server_info(self) -> dict[str, Any] | None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(
                f"{self.argv()[0]} exited with {self.process.returncode} before answering:\n"
                + self.log_tail()
            )
        try:
            with urllib.request.urlopen(f"{self.url}/server_info", timeout=5) as response:
                return json.loads(response.read())
        except (OSError, ValueError):
            return None

    def wait_ready(self, timeout: float = 120.0) -> dict[str, Any]:
        info = wait_until(
            f"{self.url}/server_info",
            self._server_info,
            timeout=timeout,
            detail=self.log_tail,
        )
        # The webserver answers before the code location has loaded; wait for that too,
        # so that every test starts against a server that knows the assets.
        gql = GraphQL(self.url)
        query = """
        { workspaceOrError { ... on Workspace { locationEntries {
            name loadStatus
            locationOrLoadError { __typename ... on PythonError { message } }
        } } } }
        """

        def location_loaded() -> bool | None:
            entries = gql(query)["workspaceOrError"].get("locationEntries", [])
            for entry in entries:
                error = entry["locationOrLoadError"] or {}
                if error.get("__typename") == "PythonError":
                    raise AssertionError(f"code location failed to load: {error['message']}")
            loaded = entries and all(e["loadStatus"] == "LOADED" for e in entries)
            return True if loaded else None

        wait_until("the code location to load", location_loaded, timeout=timeout)
        return info

    def stop(self, grace: float = 30.0) -> list[str]:
        """`stop_signal` to the process group, SIGKILL what is left after `grace` seconds.

        Returns a description of every process of the tree still alive afterwards (zombies
        awaiting their parent's reaping do not count: they hold no resources but a pid).
        """
        assert self.process is not None
        pgid = self.process.pid
        try:
            tree = [psutil.Process(pgid), *psutil.Process(pgid).children(recursive=True)]
        except psutil.NoSuchProcess:
            tree = []
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, self.stop_signal)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=grace)
        _, alive = psutil.wait_procs(tree, timeout=max(1.0, grace / 3))
        if alive or self.process.poll() is None:
            self.killed = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            self.process.wait(timeout=10)
            psutil.wait_procs(alive, timeout=5)
        self._log.close()
        left = []
        for proc in [*tree, *_group_members(pgid)]:
            try:
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    left.append(f"pid {proc.pid}: {' '.join(proc.cmdline())[:200]}")
            except psutil.NoSuchProcess:
                continue
        return sorted(set(left))


def _group_members(pgid: int) -> list[psutil.Process]:
    members = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid:
                members.append(proc)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return members
