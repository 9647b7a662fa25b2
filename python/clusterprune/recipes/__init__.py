"""The strategies a recipe chooses among: features, weightings, fusions, scores, refit."""
