"""Pretraining stage: context encoders (Pathak et al., CVPR 2016) and their baselines."""

__version__ = "0.1.0"
