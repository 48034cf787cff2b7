"""segcrit: self-hosted Segment -> Criteo sync."""

__version__ = "0.1.0"
