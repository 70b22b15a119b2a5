"""Shared fakes for tests: a fake clock, an in-memory uploader, an effect listener that crashes, a world."""
