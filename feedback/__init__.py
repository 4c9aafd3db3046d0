"""Feedback loop: the impression/feedback writer to PostgreSQL and the A/B analysis (stats, report)."""
