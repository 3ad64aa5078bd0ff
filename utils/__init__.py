"""Generic helpers with no knowledge of models or data: typed CLI/YAML options, one-line errors, atomic writes."""
