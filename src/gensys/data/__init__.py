"""gensys.data: readers for real source formats, byte-level BPE tokenizers, batching and packing.

Submodules: `readers` (text/jsonl/tsv/csv, Stack Exchange XML, captions, images), `tokenizer`, `batching`,
`atomic` (atomic file writes).
"""
