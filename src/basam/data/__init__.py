"""Benchmark data: dataset readers for the usual folder layouts, and prompts from ground truth."""

from basam.data.datasets import (
    IMAGE_SUFFIXES,
    LAYOUTS,
    SPLITS,
    DataSpec,
    Sample,
    SegmentationDataset,
    apply_split,
    detect_layout,
    open_data_spec,
    open_datasets,
    parse_data_arg,
    parse_data_spec,
    split_samples,
)
from basam.data.prompts import PROMPT_KINDS, Prompt, make_prompt

__all__ = [
    "DataSpec",
    "SPLITS",
    "apply_split",
    "open_data_spec",
    "parse_data_spec",
    "split_samples",
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
