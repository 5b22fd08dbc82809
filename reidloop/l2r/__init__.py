"""L2R-AL: learning to rank for active learning (listwise loss prediction) and its baselines."""
