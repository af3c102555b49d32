"""Paper-specific figures and widget views (matplotlib, ipywidgets); notebooks call these."""
