"""Circuit discovery: heads, neurons, void layers, circuit graphs (built in a later issue)."""
