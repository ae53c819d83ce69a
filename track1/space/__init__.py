"""The search space: the official code (code), the networks it describes (geometry), their cost (cost), the space at a
width multiplier (search_space), parts of the official sub-space and uniform draws from them (subspace), and its
few-shot splits into groups (split)."""
from track1.space.code import (CODE_LENGTH, DEPTH_CHOICES, MAX_DEPTHS, OFFICIAL_CHOICES, RATIOS, RESOLUTIONS,
                               STAGE_OFFSETS, Arch, CodeError, hamming, official_problem, parse,
                               parse_official, tied)
from track1.space.geometry import (BASE_WIDTHS, STAGE_STRIDES, STEM_BASE, STEM_CONV, STEM_POOL, Block, Widths,
                                   block_plan, conv_out, layer_sequence, make_divisible, needs_projection)
from track1.space.search_space import SearchSpace, unique_widths
from track1.space.subspace import Subspace


__all__ = ["CODE_LENGTH", "DEPTH_CHOICES", "MAX_DEPTHS", "OFFICIAL_CHOICES", "RATIOS", "RESOLUTIONS",
           "STAGE_OFFSETS", "Arch", "CodeError", "hamming", "official_problem", "parse", "parse_official",
           "tied", "BASE_WIDTHS", "STAGE_STRIDES", "STEM_BASE", "STEM_CONV", "STEM_POOL", "Block", "Widths",
           "block_plan", "conv_out", "layer_sequence", "make_divisible", "needs_projection", "SearchSpace", "Subspace", "unique_widths"]
