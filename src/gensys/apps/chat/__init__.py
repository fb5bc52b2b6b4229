"""gensys.apps.chat."""
