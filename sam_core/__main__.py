from sam_core.cli import run_process

raise SystemExit(run_process())
