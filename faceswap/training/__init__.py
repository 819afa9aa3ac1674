"""Training: the loop, tasks, checkpoints + EMA, the Ray runner, validation, MLflow tracking, configs."""
