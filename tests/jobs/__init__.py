from pathlib import Path

NIGHTLY = Path(__file__).resolve().parents[2] / "jobs" / "nightly.py"
RAYJOB_YAML = NIGHTLY.parent / "rayjob.yaml"
RAYCRONJOB_YAML = NIGHTLY.parent / "raycronjob.yaml"
