"""Ablation grids for the Parameter Golf kit: run a grid of train_gpt.py runs, then report.

    python -m ablations run GRID.toml [--out DIR] [--script train_gpt.py]
    python -m ablations report RESULTS.csv [--metric val_bpb] [--control NAME] ...

See ablations/README.md.
"""

__all__ = ["grid", "runner", "stats", "report", "cli"]
