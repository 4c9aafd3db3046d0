"""Project scripts; ``scripts.aws`` holds the AWS helpers (``python -m scripts.aws``)."""
