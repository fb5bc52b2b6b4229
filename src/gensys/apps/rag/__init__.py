"""gensys.apps.rag."""
