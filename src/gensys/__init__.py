"""gensys: one small, readable PyTorch stack for the five systems of the GenAI system-design playbook."""

__version__ = "0.1.0"
