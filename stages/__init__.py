"""DVC stages: one module per stage, each a pure `run(...)` plus a thin `main()` CLI."""
