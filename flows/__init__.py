"""Prefect flows: thin orchestration over the stage functions (no ML logic here)."""
