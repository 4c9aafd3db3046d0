"""The kernel every layer above may import: one exception tree, the settings, the Triton client, logging, the
shared ASGI helpers. It imports neither ``trainer``, ``gateway``, ``feedback`` nor the CLI (import contract)."""
