"""Training tasks: each owns the data, model and loss of one stage (see speechllama.train.fit)."""
