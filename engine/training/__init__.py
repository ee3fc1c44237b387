"""Training of the bundled models' alignment heads and rerankers on cached tower features."""


class TrainingError(ValueError):
    """A training job cannot run as asked (a checkpoint that does not fit the heads or the model, a dataset too
    small to mine from); the message says what to do. The CLI prints it as one line."""
