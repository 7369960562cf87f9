"""Benchmark data: dataset readers for the usual folder layouts, and prompts from ground truth."""

from basam.data.datasets import (
    IMAGE_SUFFIXES,
    LAYOUTS,
    Sample,
    SegmentationDataset,
    detect_layout,
    open_datasets,
    parse_data_arg,
)
from basam.data.prompts import PROMPT_KINDS, Prompt, make_prompt

__all__ = [
    "IMAGE_SUFFIXES",
    "LAYOUTS",
    "PROMPT_KINDS",
    "Prompt",
    "Sample",
    "SegmentationDataset",
    "detect_layout",
    "make_prompt",
    "open_datasets",
    "parse_data_arg",
]
