"""jobworkerd: a single-host job runner. The daemon's package; see DESIGN.md for the layout."""

__version__ = "0.1.0"
