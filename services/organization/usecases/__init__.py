"""Use cases of the organization service: each class serves one group of RPCs over the database."""
