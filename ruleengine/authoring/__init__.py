"""Tools for policy authors: tests with coverage, static checks, semantic diffs, decision maps."""
