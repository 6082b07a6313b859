"""unstract-watcher: a drop-folder ingestion daemon for Unstract and LLMWhisperer."""
