"""Accounts' broadcast settings: configuration, encryption, Redis store, service, CLI."""
