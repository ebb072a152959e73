"""Use cases of the github_data service: each combines the store, the outbox and a provider.

`domain/` holds the plain rules (names, normalization, records); these modules run them inside
database transactions.
"""
