"""Utilities every stage may use: progress lines, output folders, the compilation cache, chip tables, error
wording, process exits. Imports only config."""
