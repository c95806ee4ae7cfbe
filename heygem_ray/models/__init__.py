"""Network definitions whose weights come from published checkpoints."""
