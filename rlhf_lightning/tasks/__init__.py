"""Built-in demo tasks that run offline (no downloads): data, a gold reward and a warm-start policy."""
