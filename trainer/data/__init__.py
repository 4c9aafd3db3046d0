"""Loaders: HetRec Last.fm 2K, Last.fm-1K logs, any table, and the synthetic music world."""
