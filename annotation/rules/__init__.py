"""The rules every room obeys: domain errors, input limits, roles and accounts, the audit log,
the read queries, and the rules of named held-out datasets and their vocabularies. Imports
only the models."""
