"""`python -m live ...`: run, executor, kill, status (thin: parsing and wiring only)."""
