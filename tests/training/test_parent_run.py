"""`python -m faceswap.training.tracking -- CMD`: the command runs under one parent MLflow run
whose id its children see; the parent's status follows the exit code."""
import sys

from faceswap.training.tracking import PARENT_RUN_ENV, run_under_parent


def test_command_runs_under_a_parent_run(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    seen = tmp_path / "seen.txt"
    ok = [sys.executable, "-c", f"import os; open({str(seen)!r}, 'w').write(os.environ[{PARENT_RUN_ENV!r}])"]
    assert run_under_parent(ok, tracking_uri=uri, experiment="e", artifact_root=str(tmp_path / "art")) == 0
    assert run_under_parent([sys.executable, "-c", "raise SystemExit(3)"], tracking_uri=uri, experiment="e",
                            artifact_root=str(tmp_path / "art")) == 3
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("e").experiment_id], order_by=["attributes.start_time ASC"])
    assert [r.info.status for r in runs] == ["FINISHED", "FAILED"]
    assert seen.read_text() == runs[0].info.run_id
