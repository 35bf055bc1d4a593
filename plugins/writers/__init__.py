"""Writers: the output formats of `surgeon run --format`."""
