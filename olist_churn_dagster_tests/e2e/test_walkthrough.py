"""The README's operator walkthrough, run as written: `make run` in its own process group,
the README's own shell commands from a folder that looks like the repository to them,
and what each step says the operator sees, checked through GraphQL and in Chromium.

The commands are read from README.md, not copied here, so a changed command is run as
changed; the step texts the checks rely on are asserted present, so README and test
cannot drift apart silently."""

from __future__ import annotations

import contextlib
import csv
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from olist_churn_dagster.lib.alerts import read_alerts
from olist_churn_dagster_tests.e2e.browser import chromium, open_and_wait
from olist_churn_dagster_tests.e2e.conftest import OUTPUT_DIR, REPO_ROOT, operator_environment
from olist_churn_dagster_tests.e2e.server import (
    DagsterDev,
    GraphQL,
    free_port,
    runs,
    tags_of,
    wait_runs_finished,
    wait_until,
)
from olist_churn_dagster_tests.e2e.test_dagster_dev import (
    FEATURE_ASSETS,
    SCORES,
    assert_succeeded,
    materialized_pairs,
)

README = REPO_ROOT / "README.md"
SECTION = "### Operator walkthrough"
pytestmark = pytest.mark.e2e

SCALE = 0.05
REPLAYED_DAYS = 7
SNAPSHOT_JOB = "load_snapshot"
SNAPSHOT_TAG = "olist/snapshot"
SENSORS = ("snapshot_sensor", "champion_sensor", "run_failure_alerts", "scores_freshness")
GROUPS = ("raw", "feature_store", "model", "scoring")
# The partitioned assets every snapshot run must leave green for its date. An asset the
# snapshot job comes to compute per date is one more entry here, and every check of the
# new partitions (GraphQL, failed counts) then covers it too.
PER_SNAPSHOT_ASSETS: list[list[str]] = [*FEATURE_ASSETS, SCORES, ["ml", "risk_digest"]]
# What the operator is told they will see, in the README's words (whitespace collapsed):
# each check below stands on one of these sentences.
README_PROMISES = {
    1: ["`make run`", "*View lineage*", "no group is red"],
    2: [
        "*Automation*",
        "`snapshot_sensor`, `champion_sensor`, `run_failure_alerts` and "
        "`scores_freshness` are running",
    ],
    3: ["deliver the last 7 days as daily snapshots"],
    4: [
        "*Runs* lists 7 successful `load_snapshot` runs",
        "each tagged with its snapshot and fingerprint",
        "the sensor's ticks say which snapshot is loading and which are queued",
    ],
    5: [
        "Asset `ml/churn_scores` → *Partitions*",
        "the 7 new dates are green",
        "*Reverse alphabetical sort*",
        "`scores_fresh` passing",
        "today's date being scored",
    ],
    6: ["`risk_rank`", "`reasons` in words", "what changed"],
}
# Which steps carry a command, and how many: a command added to the README fails here
# until the test runs it.
COMMAND_STEPS = {3: 1, 6: 1}
# The digest CSV's first columns: where its `head` starts in step 6's output.
DIGEST_HEADER = "reference_date,previous_date,"
# The collapsed group nodes of the lineage: each group's status counts with their colour
# (a red count is assets failed, or with a failed check of severity ERROR).
GROUP_COUNTS = """
const groups = {};
for (const node of document.querySelectorAll('foreignObject.group')) {
  const name = node.querySelector('[data-tooltip]').getAttribute('data-tooltip');
  groups[name] = [...node.querySelectorAll('.BaseTag')].map(tag => {
    const fill = tag.style.getPropertyValue('--tag-fill-color');
    return [(fill.match(/background-(\\w+)/) || [, fill])[1], tag.textContent.trim()];
  });
}
return groups;
"""
# The Automation page: each named row's on/off switch (the row's last checkbox).
AUTOMATION_TOGGLES = """
const toggles = {};
for (const el of document.querySelectorAll('a, span, div')) {
  const name = el.textContent.trim();
  if (el.children.length !== 0 || !arguments[0].includes(name)) continue;
  let row = el;
  while (row && row.querySelectorAll('input[type=checkbox]').length < 2) row = row.parentElement;
  if (!row) continue;
  const boxes = row.querySelectorAll('input[type=checkbox]');
  toggles[name] = boxes[boxes.length - 1].checked;
}
return toggles;
"""
PARTITION_ROWS = """
const rows = [];
for (const el of document.querySelectorAll('[data-tooltip]')) {
  const key = el.getAttribute('data-tooltip');
  if (!/^\\d{4}-\\d{2}-\\d{2}$/.test(key)) continue;
  const dot = el.parentElement.querySelector('div[style*="border-radius: 100%"]');
  const background = dot ? dot.style.background : '';
  rows.push([key, (background.match(/accent-(\\w+)/) || [, background])[1]]);
}
return rows;
"""
SENSOR_STATES = """
{ repositoriesOrError { ... on RepositoryConnection { nodes { sensors {
    name sensorState { status ticks(limit: 200) { status skipReason timestamp runIds } }
} } } } }
"""
ASSET_STATUS = """
query Status($path: [String!]!) { assetNodeOrError(assetKey: {path: $path}) {
  ... on AssetNode {
    groupName
    partitionKeys
    partitionStats { numMaterialized numPartitions numFailed numMaterializing }
    assetPartitionStatuses { ... on DefaultPartitionStatuses {
      materializedPartitions failedPartitions materializingPartitions } }
    assetMaterializations(limit: 1) { partition runId metadataEntries { label } }
  } } }
"""
ASSET_CHECKS = """
{ assetNodes { assetKey { path } assetChecksOrError { ... on AssetChecks { checks {
    name executionForLatestMaterialization {
      status evaluation { severity description } } } } } } }
"""
CHECK_EXECUTIONS = """
query Check($path: [String!]!, $name: String!) {
  assetCheckExecutions(assetKey: {path: $path}, checkName: $name, limit: 1) {
    runId status partition timestamp evaluation { success description }
  } }
"""


def _collapse(text: str) -> str:
    return " ".join(text.split())


@dataclass(frozen=True)
class Walkthrough:
    """The README's walkthrough: each numbered step's text, and its bash blocks."""

    steps: dict[int, str]
    commands: dict[int, list[str]]

    def command(self, step: int) -> str:
        (only,) = self.commands[step]
        return only


def read_walkthrough(readme: Path) -> Walkthrough:
    text = readme.read_text(encoding="utf-8")
    assert SECTION in text, f"{readme.name} has no {SECTION!r} section"
    section = text.split(SECTION, 1)[1]
    section = re.split(r"^#{1,3} ", section, maxsplit=1, flags=re.MULTILINE)[0]
    parts = re.split(r"^(\d+)\. ", section, flags=re.MULTILINE)
    steps: dict[int, str] = {}
    commands: dict[int, list[str]] = {}
    for number, body in zip(parts[1::2], parts[2::2], strict=True):
        blocks = re.findall(r"^[ ]*```bash\n(.*?)^[ ]*```", body, flags=re.MULTILINE | re.DOTALL)
        steps[int(number)] = _collapse(body)
        if blocks:
            commands[int(number)] = [textwrap.dedent(block).strip() for block in blocks]
    return Walkthrough(steps, commands)


def caption(shot: str, text: str) -> None:
    """What a person sees on the screenshot, printed beside its name."""
    print(f"\n[walkthrough] {shot}.png: {text}", file=sys.stderr)


def run_readme_command(workdir: Path, command: str, env: dict[str, str]) -> str:
    """The README's command, exactly, with bash from the working folder; its stdout."""
    done = subprocess.run(
        ["bash", "-c", command],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, (
        f"`{command}` exited with {done.returncode}\n"
        f"stdout:\n{done.stdout[-4000:]}\nstderr:\n{done.stderr[-4000:]}"
    )
    print(f"\n[walkthrough] $ {command}\n{done.stdout.rstrip()}", file=sys.stderr)
    return done.stdout


@dataclass(frozen=True)
class Walk:
    """`make run`'s server and the operator's working folder (the repository, to them)."""

    url: str
    gql: GraphQL
    workdir: Path
    env: dict[str, str]
    readme: Walkthrough

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"


@pytest.fixture(scope="module")
def walkthrough() -> Walkthrough:
    return read_walkthrough(README)


@pytest.fixture(scope="module")
def walk(tmp_path_factory: pytest.TempPathFactory, walkthrough: Walkthrough) -> Iterator[Walk]:
    """Step 1, literally: `make run` with the demo's data in the working folder's `data`."""
    root = tmp_path_factory.mktemp("walkthrough")
    workdir = root / "repo"
    workdir.mkdir()
    # `.venv/bin/...` and `data/...` in the README resolve here as in the repository.
    (workdir / ".venv").symlink_to(REPO_ROOT / ".venv")
    env = operator_environment()
    port = free_port()
    command = ["make", "run", f"DATA_DIR={workdir / 'data'}", f"SCALE={SCALE}", f"PORT={port}"]
    server = DagsterDev(
        REPO_ROOT,
        env,
        log_path=root / "make-run.log",
        port=port,
        command=command,
        stop_signal=signal.SIGINT,  # Ctrl-C, as `make run` says
    )
    started = time.perf_counter()
    server.start()
    try:
        server.wait_ready(timeout=480)
        ready = time.perf_counter() - started
        log = server.log_path.read_text(errors="replace")
        prepared = re.search(r"^prepared .* in ([\d.]+) s$", log, flags=re.MULTILINE)
        assert prepared, f"`make run` did not prepare anything:\n{server.log_tail()}"
        print(
            f"\n[walkthrough] {' '.join(command)}: UI ready after {ready:.1f} s, "
            f"of which olist-churn prepare {prepared.group(1)} s",
            file=sys.stderr,
        )
        yield Walk(server.url, GraphQL(server.url), workdir, env, walkthrough)
    finally:
        stopping = time.perf_counter()
        left = server.stop()
        print(
            f"\n[walkthrough] make run stopped by Ctrl-C (SIGINT) in "
            f"{time.perf_counter() - stopping:.1f} s"
            + (", SIGKILL needed for what was left" if server.killed else ""),
            file=sys.stderr,
        )
        OUTPUT_DIR.mkdir(exist_ok=True)
        shutil.copy(server.log_path, OUTPUT_DIR / "walkthrough-make-run.log")
    assert not left, "processes of `make run` left after teardown:\n" + "\n".join(left)


@pytest.fixture(scope="module")
def browser(walk: Walk) -> Iterator[webdriver.Chrome]:
    with chromium(walk.url) as driver:
        yield driver


def sensors(gql: GraphQL) -> dict[str, dict[str, Any]]:
    nodes = gql(SENSOR_STATES)["repositoriesOrError"]["nodes"]
    return {s["name"]: s["sensorState"] for node in nodes for s in node["sensors"]}


def sort_newest_first(browser: webdriver.Chrome) -> None:
    """The partitions list's sort button (beside *Filter by name*), then *Reverse
    alphabetical sort*: dates as keys, the newest comes first."""
    field = browser.find_element(By.CSS_SELECTOR, "input[placeholder^='Filter by name']")
    box = field.find_element(By.XPATH, "./ancestor::div[.//button][1]")
    box.find_element(By.CSS_SELECTOR, "button").click()
    choice = "//*[normalize-space(text())='Reverse alphabetical sort']"
    wait_until("the sort menu", lambda: browser.find_elements(By.XPATH, choice) or None, timeout=10)
    browser.find_element(By.XPATH, choice).click()
    ActionChains(browser).send_keys(Keys.ESCAPE).perform()  # the menu off the list


def asset_status(gql: GraphQL, path: list[str]) -> dict[str, Any]:
    return gql(ASSET_STATUS, {"path": path})["assetNodeOrError"]


def test_the_readme_walkthrough_is_what_this_test_runs(walkthrough: Walkthrough) -> None:
    assert sorted(walkthrough.steps) == list(range(1, len(walkthrough.steps) + 1))
    for step, promises in README_PROMISES.items():
        for promise in promises:
            assert promise in walkthrough.steps[step], (
                f"README walkthrough step {step} no longer says {promise!r}; the test "
                f"checks it:\n{walkthrough.steps[step]}"
            )
    counts = {step: len(blocks) for step, blocks in walkthrough.commands.items()}
    assert counts == COMMAND_STEPS, (
        f"the walkthrough's commands are now in steps {counts}, the test runs {COMMAND_STEPS}"
    )


def test_step_1_make_run_serves_the_lineage_with_no_group_red(
    walk: Walk, browser: webdriver.Chrome
) -> None:
    gql = walk.gql
    for path in PER_SNAPSHOT_ASSETS:
        stats = asset_status(gql, path)["partitionStats"]
        assert stats["numFailed"] == 0, f"{path}: {stats}"
    for path in FEATURE_ASSETS:
        stats = asset_status(gql, path)["partitionStats"]
        assert stats["numMaterialized"] == stats["numPartitions"] > 0, f"{path}: {stats}"
    assert asset_status(gql, SCORES)["partitionStats"]["numMaterialized"] > 0
    assert asset_status(gql, ["ml", "churn_model"])["assetMaterializations"]
    assert runs(gql, statuses=["FAILURE"]) == []
    counts = lineage_groups(browser, walk.url, "walkthrough-step-1-lineage")
    assert red_checks(gql) == []
    assert_none_red(counts)


def red_checks(gql: GraphQL) -> list[str]:
    """The checks that make an asset red in the UI: on the asset's latest materialization,
    failed with severity ERROR, or not executed for an error."""
    red = []
    for node in gql(ASSET_CHECKS)["assetNodes"]:
        for check in (node["assetChecksOrError"] or {}).get("checks", []):
            execution = check["executionForLatestMaterialization"] or {}
            evaluation = execution.get("evaluation") or {}
            if execution.get("status") == "EXECUTION_FAILED" or (
                execution.get("status") == "FAILED" and evaluation.get("severity") == "ERROR"
            ):
                key = "/".join(node["assetKey"]["path"])
                red.append(f"{key} {check['name']}: {evaluation.get('description')}")
    return red


def lineage_groups(browser: webdriver.Chrome, url: str, shot: str) -> dict[str, list[list[str]]]:
    """The lineage's groups as the operator sees them: each one's status counts and their
    colour (green materialized, yellow missing, red failed, blue running)."""
    open_and_wait(browser, f"{url}/asset-groups", ["Global asset lineage", *GROUPS], shot)

    def every_group_counted() -> dict[str, list[list[str]]] | None:
        found = browser.execute_script(GROUP_COUNTS)
        return found if set(found) == set(GROUPS) and all(found.values()) else None

    counts = wait_until("every group's status counts", every_group_counted, timeout=60)
    assert browser.save_screenshot(str(OUTPUT_DIR / f"{shot}.png"))
    described = "; ".join(
        f"{group} " + ", ".join(f"{n} {colour}" for colour, n in counts[group]) for group in GROUPS
    )
    caption(shot, f"Global asset lineage, the groups' status counts: {described}")
    return counts


def assert_none_red(counts: dict[str, list[list[str]]]) -> None:
    red = {group: n for group, tags in counts.items() for colour, n in tags if colour == "red"}
    assert not red, f"red in the lineage (group: assets): {red}; all counts: {counts}"


def test_step_2_the_four_sensors_are_running(walk: Walk, browser: webdriver.Chrome) -> None:
    states = sensors(walk.gql)
    assert {name: states[name]["status"] for name in SENSORS} == dict.fromkeys(SENSORS, "RUNNING")
    shot = "walkthrough-step-2-automation"
    open_and_wait(browser, f"{walk.url}/automation", list(SENSORS), shot)
    # The switches render off until the sensors' states have loaded.
    wait_until(
        "the four sensors' switches on",
        lambda: (
            browser.execute_script(AUTOMATION_TOGGLES, list(SENSORS))
            == dict.fromkeys(SENSORS, True)
            or None
        ),
        timeout=30,
        detail=lambda: f"switches: {browser.execute_script(AUTOMATION_TOGGLES, list(SENSORS))}",
    )
    assert browser.save_screenshot(str(OUTPUT_DIR / f"{shot}.png"))
    caption(shot, f"Automation: {', '.join(SENSORS)}, each with its switch on (running)")


@dataclass(frozen=True)
class Replay:
    """Step 3's snapshots and the runs the sensor made of them, oldest first."""

    dates: list[date]
    runs: list[dict[str, Any]]
    markers: list[float]  # each snapshot's `_SUCCESS` mtime


@pytest.fixture(scope="module")
def replayed(walk: Walk) -> Replay:
    """Step 3 as written, then step 4's wait: the sensor's runs of the 7 snapshots."""
    today = date.today()
    dates = [today - timedelta(days=n) for n in range(REPLAYED_DAYS - 1, -1, -1)]
    out = run_readme_command(walk.workdir, walk.readme.command(3), walk.env)
    snapshots = walk.data_dir / "snapshots"
    assert out.splitlines() == [
        *(str(snapshots / day.isoformat()) for day in dates),
        f"wrote {REPLAYED_DAYS} snapshots under {snapshots}",
    ]
    markers = [(snapshots / day.isoformat() / "_SUCCESS").stat().st_mtime for day in dates]

    found = wait_runs_finished(
        walk.gql,
        f"{REPLAYED_DAYS} {SNAPSHOT_JOB} runs",
        timeout=420,
        expect=REPLAYED_DAYS,
        pipelineName=SNAPSHOT_JOB,
    )
    ordered = sorted(found, key=lambda run: run["creationTime"])
    # A further tick after the last run: the sensor has nothing more to launch.
    last_end = max(run["endTime"] for run in ordered)
    wait_until(
        "a snapshot_sensor tick after the last snapshot run",
        lambda: (
            True
            if any(t["timestamp"] > last_end for t in sensors(walk.gql)["snapshot_sensor"]["ticks"])
            else None
        ),
        timeout=60,
        interval=2,
    )
    return Replay(dates, runs(walk.gql, pipelineName=SNAPSHOT_JOB)[::-1], markers)


def test_step_3_and_4_each_snapshot_is_loaded_by_one_successful_run_in_order(
    walk: Walk, replayed: Replay, browser: webdriver.Chrome
) -> None:
    gql = walk.gql
    ordered = sorted(replayed.runs, key=lambda run: run["creationTime"])
    assert len(ordered) == REPLAYED_DAYS, [(r["runId"], tags_of(r)) for r in ordered]
    for run in ordered:
        assert_succeeded(gql, run)
        tags = tags_of(run)
        assert tags.get("olist/snapshot_fingerprint"), tags
        # The run computed its date's partition of every per-snapshot asset.
        expected = {("/".join(path), tags[SNAPSHOT_TAG]) for path in PER_SNAPSHOT_ASSETS}
        missing = expected - materialized_pairs(gql, run["runId"])
        assert not missing, f"run {run['runId']} did not materialize {sorted(missing)}"
    assert [tags_of(run)[SNAPSHOT_TAG] for run in ordered] == [
        day.isoformat() for day in replayed.dates
    ]
    for earlier, later in itertools.pairwise(ordered):
        assert later["startTime"] >= earlier["endTime"], (
            f"{tags_of(later)[SNAPSHOT_TAG]} started before {tags_of(earlier)[SNAPSHOT_TAG]} ended"
        )
    failed = runs(gql, statuses=["FAILURE"])
    assert failed == [], [(r["jobName"], r["runId"]) for r in failed]

    alerts = read_alerts(walk.data_dir / "alerts" / "alerts.jsonl")
    kinds = [alert["kind"] for alert in alerts]
    assert kinds.count("run_failure") == 0, alerts
    assert kinds.count("snapshot_refused") == 0, alerts
    print(f"\n[walkthrough] alerts on file: {kinds}", file=sys.stderr)

    reasons = [t["skipReason"] or "" for t in sensors(gql)["snapshot_sensor"]["ticks"]]
    assert any(r.startswith("loading snapshot ") for r in reasons), reasons[:10]
    assert any("queued behind the snapshot being loaded: " in r for r in reasons), reasons[:10]

    for day, run, marker in zip(replayed.dates, ordered, replayed.markers, strict=True):
        print(
            f"\n[walkthrough] snapshot {day}: marker to run end {run['endTime'] - marker:.1f} s "
            f"(its run {run['endTime'] - run['startTime']:.1f} s)",
            file=sys.stderr,
        )
    total = ordered[-1]["endTime"] - min(replayed.markers)
    print(f"\n[walkthrough] all {REPLAYED_DAYS} snapshots: {total:.1f} s", file=sys.stderr)

    shot = "walkthrough-step-4-runs"
    ids = [run["runId"][:8] for run in ordered]
    text = open_and_wait(browser, f"{walk.url}/runs", [SNAPSHOT_JOB, *ids], shot)
    assert "Failure" not in text, text[:3000]
    caption(
        shot,
        f"Runs: the {REPLAYED_DAYS} load_snapshot runs ({', '.join(ids)}), each Success, "
        "none failed",
    )


def test_step_5_the_new_dates_are_green_and_scores_fresh_passes(
    walk: Walk, replayed: Replay, browser: webdriver.Chrome
) -> None:
    gql = walk.gql
    days = [day.isoformat() for day in replayed.dates]
    for path in PER_SNAPSHOT_ASSETS:
        status = asset_status(gql, path)
        assert status["partitionKeys"][-1] == days[-1], f"{path}: newest partition"
        assert status["partitionStats"]["numFailed"] == 0, f"{path}: {status['partitionStats']}"
        partitions = status["assetPartitionStatuses"]
        missing = sorted(set(days) - set(partitions["materializedPartitions"]))
        assert not missing, f"{path}: not materialized: {missing}"
        assert partitions["failedPartitions"] == [], path
    scores = asset_status(gql, SCORES)
    labels = {entry["label"] for entry in scores["assetMaterializations"][0]["metadataEntries"]}
    assert {"top_20", "sellers_per_band", "sales_at_risk"} <= labels, labels
    (execution,) = gql(CHECK_EXECUTIONS, {"path": SCORES, "name": "scores_fresh"})[
        "assetCheckExecutions"
    ]
    assert execution["status"] == "SUCCEEDED", execution

    shot = "walkthrough-step-5-scores-partitions"
    stats = scores["partitionStats"]
    oldest = scores["partitionKeys"][0]
    expected = ["churn_scores", "Failed (0)", f"Materialized ({stats['numMaterialized']})"]
    open_and_wait(
        browser, f"{walk.url}/assets/ml/churn_scores?view=partitions", [*expected, oldest], shot
    )
    newest_first = list(reversed(days))
    sort_newest_first(browser)  # as the README says: the sort button, reverse alphabetical

    def list_start() -> list[list[str]] | None:
        rows = browser.execute_script(PARTITION_ROWS)
        return rows if rows and rows[0][0] == newest_first[0] else None

    rows = wait_until("the newest partitions first", list_start, timeout=30)
    assert browser.save_screenshot(str(OUTPUT_DIR / f"{shot}.png"))
    assert rows[:REPLAYED_DAYS] == [[day, "green"] for day in newest_first], rows
    caption(
        shot,
        f"ml/churn_scores, Partitions: Failed (0), Materialized ({stats['numMaterialized']}); "
        f"sorted newest first: {days[-1]} .. {days[0]} each with a green dot",
    )

    shot = "walkthrough-step-5-scores-checks"
    url = f"{walk.url}/assets/ml/churn_scores?view=checks&checkDetail=scores_fresh"
    lines = open_and_wait(browser, url, ["scores_fresh", "Execution history"], shot).splitlines()
    status = lines[lines.index("scores_fresh") + 1]
    caption(shot, f"ml/churn_scores, Checks: scores_fresh {status}")
    assert status == "Succeeded", (
        f"the Checks tab shows scores_fresh {status!r}; its latest execution: {execution}"
    )

    counts = lineage_groups(browser, walk.url, "walkthrough-step-5-lineage")
    assert red_checks(gql) == []
    assert_none_red(counts)


def test_step_6_todays_list_for_the_account_managers(walk: Walk, replayed: Replay) -> None:
    out = run_readme_command(walk.workdir, walk.readme.command(6), walk.env)
    lines = out.splitlines()
    digest_at = next(i for i, line in enumerate(lines) if line.startswith(DIGEST_HEADER))
    for table, part, columns in (
        ("churn_scores", lines[:digest_at], {"risk_rank", "churn_probability", "reasons"}),
        ("risk_digest", lines[digest_at:], {"newly_high", "move", "reasons"}),
    ):
        header, *rows = list(csv.reader(part))
        assert len(rows) == 2, out
        assert columns <= set(header), header
        assert all(len(row) == len(header) for row in rows), out
        assert (walk.data_dir / "exports" / table / f"{date.today()}.csv").exists()


SERVING = "## Serving the champion"
SERVING_PORT = 5001  # the README's `-p`


def readme_bash_blocks(readme: Path, heading: str) -> list[str]:
    """The bash blocks of one `## ` section of the README, in order."""
    text = readme.read_text(encoding="utf-8")
    assert heading in text, f"{readme.name} has no {heading!r} section"
    section = re.split(r"^## ", text.split(heading, 1)[1], maxsplit=1, flags=re.MULTILINE)[0]
    blocks = re.findall(r"^```bash\n(.*?)^```", section, flags=re.MULTILINE | re.DOTALL)
    return [block.strip() for block in blocks]


def test_the_readme_serves_the_champion_and_scores_its_example(walk: Walk) -> None:
    """The README's two serving blocks as written, on `make run`'s model store: MLflow's
    server of the champion, then the input example posted to it."""
    serve, score = readme_bash_blocks(README, SERVING)
    assert f"-p {SERVING_PORT}" in serve, serve
    log = walk.workdir.parent / "mlflow-models-serve.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            ["bash", "-c", serve], cwd=walk.workdir, env=walk.env, start_new_session=True,
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_until(
            "mlflow models serve answering /ping",
            lambda: True if _pinged(SERVING_PORT) or server.poll() is not None else None,
            timeout=180,
            interval=1,
        )
        assert server.poll() is None, f"the server exited:\n{log.read_text()[-4000:]}"
        # `mlflow artifacts download` prints where it wrote the example; curl the answer.
        *_, answer_line = run_readme_command(walk.workdir, score, walk.env).splitlines()
        answer = json.loads(answer_line)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
    rows = answer["predictions"]
    assert len(rows) >= 1, answer
    for row in rows:
        assert 0 < row["churn_probability"] < 1, row
        assert row["risk_band"] in {"low", "medium", "high"}, row
        assert isinstance(row["reasons"], str) and row["reasons"], row


def _pinged(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5) as response:
            return response.status == 200
    except OSError:
        return False
