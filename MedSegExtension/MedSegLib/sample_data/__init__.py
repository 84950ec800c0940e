"""Built-in sample data."""
