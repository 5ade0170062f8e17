"""Core functions behind each CLI command."""
