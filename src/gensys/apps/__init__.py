"""gensys.apps."""
