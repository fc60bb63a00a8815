"""Command-line tools; a package so that ``python -m tools.<...>`` works from the repo root."""
