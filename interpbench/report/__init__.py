"""Reports: a pure function of stored cell results (tables, markdown, figures, HTML)."""
