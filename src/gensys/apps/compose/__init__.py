"""gensys.apps.compose."""
