"""Training half of the recommender: data, splits, models, evaluation, artifacts."""
