"""Statistics of the collision study: power, partial Spearman, TOST, hierarchical bootstrap, MixedLM."""
