"""Accelerators handed to the core by the service: ES256 key tables, the signature batcher."""
