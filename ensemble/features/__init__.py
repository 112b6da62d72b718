"""Feature engineering: point-in-time features in named families, targets, train-only preprocessing.

``build_features(prices)`` turns a contract table into a feature frame keyed by (ticker, date) with
``target_h{h}`` columns; ``catalogue(columns)`` lists every feature (name, family, inputs,
lookback); ``Preprocessor`` selects, imputes and scales with state learnt on training dates only.
CLI: ``python -m ensemble.features --list [--source synthetic|PATH]``.
"""

from ensemble.features.catalog import FAMILIES, FeatureSpec, catalogue, catalogue_frame
from ensemble.features.pipeline import build_features
from ensemble.features.preprocess import Preprocessor
from ensemble.features.targets import feature_columns, forward_log_returns

__all__ = [
    "FAMILIES",
    "FeatureSpec",
    "Preprocessor",
    "build_features",
    "catalogue",
    "catalogue_frame",
    "feature_columns",
    "forward_log_returns",
]
