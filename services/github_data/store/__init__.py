"""The github_data service's tables and queries; migrations live in `migrations/`."""
