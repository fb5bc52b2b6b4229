"""gensys.apps.caption."""
