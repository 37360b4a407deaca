"""Data cards, canonical formats and loading."""

from pipeline.data.cards import DataCard, DataError, read_card
from pipeline.data.loading import LoadReport, load_card

__all__ = ["DataCard", "DataError", "LoadReport", "load_card", "read_card"]
