"""The reports stage: rules `tables`, `figures` and `report_pages` (LaTeX tables, figures, the HTML
pages of `snakemake --report`)."""
