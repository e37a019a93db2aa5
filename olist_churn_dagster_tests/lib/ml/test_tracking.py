import os
import shutil
from datetime import date
from pathlib import Path

import mlflow
import numpy as np
import polars as pl
import pytest
from mlflow.tracking import MlflowClient

from olist_churn_dagster.lib.ml.calibration import Calibrator
from olist_churn_dagster.lib.ml.model import (
    ModelParams,
    plan_time_split,
    predict,
    train_churn_model,
)
from olist_churn_dagster.lib.ml.tracking import (
    MODEL_NAME,
    NoChampionError,
    backtest_champion_gate,
    champion_version,
    load_champion,
    load_model_version,
    log_and_register,
    log_calibration,
    provenance_params,
    run_model_params,
)
from olist_churn_dagster_tests.lib.ml.test_model import synthetic_abt

FAST = ModelParams(n_estimators=200, learning_rate=0.1, early_stopping_rounds=15)
WEAK = ModelParams(n_estimators=2, max_depth=1, learning_rate=0.1, early_stopping_rounds=1)


@pytest.fixture(scope="module")
def data():
    abt = synthetic_abt(n_cohorts=12, sellers=250, n_noise=3, seed=5)
    plan = plan_time_split(abt["reference_date"].unique().to_list())
    return abt, plan


@pytest.fixture(scope="module")
def results(data):
    abt, plan = data
    return {
        "weak": train_churn_model(abt, plan, WEAK),
        "good": train_churn_model(abt, plan, FAST),
    }


@pytest.fixture(scope="module")
def empty_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow database with its tables created once (that alone takes seconds)."""
    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, empty_db: Path) -> str:
    shutil.copy(empty_db, tmp_path / "mlflow.db")
    # Run from an empty directory to prove nothing lands in the working directory.
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    return f"sqlite:///{tmp_path}/mlflow.db"


def test_log_and_register_records_run_artifacts_and_version(store, results, tmp_path):
    result = results["good"]
    defaults = (mlflow.get_tracking_uri(), mlflow.get_registry_uri())
    info = log_and_register(
        result,
        tracking_uri=store,
        experiment="churn",
        run_name="first",
        extra_params={"abt_rows": 123},
        tags={"trigger": "test"},
    )
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    run = client.get_run(info.run_id)
    assert run.info.run_name == "first"
    assert run.data.tags["trigger"] == "test"
    assert run.data.params["max_depth"] == str(FAST.max_depth)
    assert run.data.params["abt_rows"] == "123"
    assert run.data.metrics["test_roc_auc"] == pytest.approx(result.metrics["roc_auc"])
    assert run.data.metrics["baseline_recency_rule_roc_auc"] == pytest.approx(
        result.baselines["recency_rule"]["roc_auc"]
    )
    assert "baseline_base_rate_brier" in run.data.metrics
    listed = {a.path for a in client.list_artifacts(info.run_id, "plots")}
    assert listed == {f"plots/{n}.png" for n in ("roc_pr", "calibration", "lift", "importance")}
    evaluation = {a.path for a in client.list_artifacts(info.run_id, "evaluation")}
    assert {"evaluation/metrics_vs_baselines.md", "evaluation/feature_importance.csv"} <= evaluation
    table = Path(client.download_artifacts(info.run_id, "evaluation/metrics_vs_baselines.md"))
    assert table.read_text().startswith("| scorer | roc_auc |")
    # Artifacts live beside the database, and the working directory stays empty.
    assert (tmp_path / "artifacts").is_dir()
    assert os.listdir(tmp_path / "cwd") == []
    version = client.get_model_version(MODEL_NAME, info.model_version)
    assert version.run_id == info.run_id
    assert info.model_uri == f"models:/{MODEL_NAME}/{info.model_version}"
    # The fluent API was only borrowed: no URI is left set in the process.
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert "MLFLOW_REGISTRY_URI" not in os.environ
    assert (mlflow.get_tracking_uri(), mlflow.get_registry_uri()) == defaults


def test_training_run_records_its_provenance_and_tuning_candidates(store, data, tmp_path):
    """A real SQLite store: the run's params name the raw load, the catalogue and the
    commit; each tuning candidate is a child run with its per-cutoff backtest figures,
    the best one (the one trained) marked as chosen."""
    from olist_churn_dagster.lib.features import FEATURE_CATALOGUE
    from olist_churn_dagster.lib.ml.backtest import tune_walk_forward, walk_forward_plans
    from olist_churn_dagster.lib.versions import catalogue_hash, git_commit

    abt, plan = data
    plans = walk_forward_plans(plan.train + plan.valid, n_cutoffs=2, horizon_days=45)
    grid = {"max_depth": [1, 3], "n_estimators": [2, 100]}
    best, candidates = tune_walk_forward(abt, plans, grid, base=FAST)
    provenance = provenance_params("f" * 64, catalogue_hash(FEATURE_CATALOGUE), git_commit())
    info = log_and_register(
        train_churn_model(abt, plan, best),
        tracking_uri=store,
        experiment="churn",
        extra_params=provenance,
        candidates=candidates,
    )
    client = MlflowClient(tracking_uri=store)
    params = client.get_run(info.run_id).data.params
    assert params["raw_fingerprint"] == "f" * 64
    assert params["feature_catalogue_sha256"] == catalogue_hash(FEATURE_CATALOGUE)
    assert len(params["feature_catalogue_sha256"]) == 64
    assert params.get("code_git_commit") == git_commit()  # absent without git
    assert params["tuning_candidates"] == "4"
    assert params["max_depth"] == str(best.max_depth)
    children = client.search_runs(
        [info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{info.run_id}'"
    )
    assert len(children) == 4
    by_rank = {int(c.data.params["rank"]): c for c in children}
    assert sorted(by_rank) == [1, 2, 3, 4]
    assert [r.data.tags["chosen"] for _, r in sorted(by_rank.items())] == ["true"] + ["false"] * 3
    chosen = by_rank[1].data
    assert (int(chosen.params["max_depth"]), int(chosen.params["n_estimators"])) == (
        best.max_depth,
        best.n_estimators,
    )
    means = [by_rank[k].data.metrics["mean_roc_auc"] for k in sorted(by_rank)]
    assert means == sorted(means, reverse=True)
    for rank, child in by_rank.items():
        row = candidates.row(rank - 1, named=True)
        history = client.get_metric_history(child.info.run_id, "backtest_roc_auc")
        assert [m.step for m in history] == [0, 1]
        assert [m.value for m in history] == pytest.approx(
            [c["roc_auc"] for c in row["per_cutoff"]]
        )
        assert child.data.params["cutoffs"] == ",".join(str(p.test[0]) for p in plans)
        assert "backtest_precision_top_decile" in child.data.metrics
    # The model itself belongs to the parent run, not to a candidate.
    assert client.get_model_version(MODEL_NAME, info.model_version).run_id == info.run_id


def test_provenance_leaves_out_what_is_not_known():
    assert provenance_params(None, "c" * 64, None) == {"feature_catalogue_sha256": "c" * 64}


def test_the_gate_records_its_decision_and_the_champion_loads_by_alias(store, results, data):
    abt, plan = data
    with pytest.raises(NoChampionError):
        load_champion(store)
    versions = {
        name: log_and_register(results[name], tracking_uri=store, experiment="churn")
        for name in ("good", "weak")
    }
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    cutoffs = [date(2020, m, 1) for m in (1, 2, 3)]

    def table(metric: str, values: list[float]) -> pl.DataFrame:
        return pl.DataFrame({"cutoff": cutoffs, metric: values})

    first, _ = backtest_champion_gate(
        tracking_uri=store,
        candidate_version=versions["good"].model_version,
        candidate_params=FAST,
        candidate_table=table("roc_auc", [0.80, 0.82, 0.81]),
        rerun=lambda params, features: pytest.fail("no champion to rerun"),
        abt_columns=abt.columns,
    )
    assert first.promoted and first.champion_version is None
    # The decision and the score are recorded on the model version and on its run.
    tags = client.get_model_version(MODEL_NAME, versions["good"].model_version).tags
    assert tags["gate.promoted"] == "true"
    assert tags["gate.oot_window"] == "backtest 2020-01-01..2020-03-01 (3 cutoffs)"
    run_tags = client.get_run(versions["good"].run_id).data.tags
    assert float(run_tags["gate.candidate_score"]) == pytest.approx(0.81)

    # A lower-is-better metric is compared the other way round.
    by_brier, _ = backtest_champion_gate(
        tracking_uri=store,
        candidate_version=versions["weak"].model_version,
        candidate_params=WEAK,
        candidate_table=table("brier", [0.20, 0.22, 0.21]),
        rerun=lambda params, features: table("brier", [0.15, 0.16, 0.17]),
        abt_columns=abt.columns,
        metric="brier",
    )
    assert not by_brier.promoted
    assert by_brier.candidate_score > by_brier.champion_score
    assert (
        client.get_model_version(MODEL_NAME, versions["weak"].model_version).tags["gate.promoted"]
        == "false"
    )

    # The champion is loaded by alias and scores exactly like the in-memory booster.
    champion = load_champion(store)
    assert champion.version == versions["good"].model_version
    assert champion.feature_names == results["good"].feature_names
    np.testing.assert_array_equal(
        predict(champion.booster, abt, champion.feature_names),
        predict(results["good"].booster, abt, results["good"].feature_names),
    )

    # When the champion's features are gone from the table, the candidate wins by default.
    reduced = train_churn_model(abt.drop("noise_0"), plan, WEAK)
    reduced_version = log_and_register(
        reduced, tracking_uri=store, experiment="churn"
    ).model_version
    changed, none = backtest_champion_gate(
        tracking_uri=store,
        candidate_version=reduced_version,
        candidate_params=WEAK,
        candidate_table=table("roc_auc", [0.6, 0.6, 0.6]),
        rerun=lambda params, features: pytest.fail("a champion without its features reran"),
        abt_columns=abt.drop("noise_0").columns,
    )
    assert changed.promoted and changed.champion_score is None and none is None
    assert "feature set changed" in changed.reason
    assert champion_version(store) == reduced_version
    assert os.listdir(Path(store.removeprefix("sqlite:///")).parent / "cwd") == []


def test_backtest_gate_reruns_the_champion_recipe_on_the_same_cutoffs(store, results, data):

    abt, _ = data
    cutoffs = [date(2020, m, 1) for m in (1, 2, 3)]

    def table(aucs: list[float]) -> pl.DataFrame:
        return pl.DataFrame({"cutoff": cutoffs, "roc_auc": aucs})

    versions = {
        name: log_and_register(results[name], tracking_uri=store, experiment="churn")
        for name in ("good", "weak")
    }
    assert run_model_params(store, versions["good"].run_id) == FAST
    calls: list[tuple[ModelParams, list[str]]] = []

    def rerun(params: ModelParams, features) -> pl.DataFrame:
        calls.append((params, list(features)))
        return table([0.80, 0.82, 0.81])  # the champion recipe's backtest

    common = {"tracking_uri": store, "rerun": rerun, "abt_columns": abt.columns}
    first, none = backtest_champion_gate(
        candidate_version=versions["good"].model_version,
        candidate_params=FAST,
        candidate_table=table([0.80, 0.82, 0.81]),
        **common,
    )
    assert first.promoted and none is None and not calls
    worse, champion_rows = backtest_champion_gate(
        candidate_version=versions["weak"].model_version,
        candidate_params=WEAK,
        candidate_table=table([0.79, 0.80, 0.80]),
        **common,
    )
    assert calls == [(FAST, results["good"].feature_names)]
    assert not worse.promoted and "backtest" in worse.reason, worse.reason
    assert worse.champion_score == pytest.approx(0.81) and champion_rows.height == 3
    assert champion_version(store) == versions["good"].model_version
    within, _ = backtest_champion_gate(
        candidate_version=versions["weak"].model_version,
        candidate_params=WEAK,
        candidate_table=table([0.79, 0.80, 0.80]),
        tolerance=0.02,
        **common,
    )
    assert within.promoted  # 0.7967 >= 0.81 - 0.02
    log_calibration(
        store, versions["weak"].run_id, versions["weak"].model_version, Calibrator("platt", (2, 1))
    )
    loaded = load_model_version(store, versions["weak"].model_version)
    assert loaded.calibrator == Calibrator("platt", (2, 1))
    assert load_model_version(store, versions["good"].model_version).calibrator.method == "none"
