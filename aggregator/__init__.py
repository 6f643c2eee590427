"""aggregator: poll news feeds, normalize and deduplicate their items, republish filtered topic feeds."""

__version__ = "0.1.0"
