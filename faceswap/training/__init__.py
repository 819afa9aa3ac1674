"""Training support: data loading (`data`), checkpoints/EMA/RNG (`checkpoint`), training loops."""
