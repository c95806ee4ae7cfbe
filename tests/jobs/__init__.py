from pathlib import Path

NIGHTLY = Path(__file__).resolve().parents[2] / "jobs" / "nightly.py"
