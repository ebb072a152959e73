"""The sandbox service's tables and queries; migrations live in `migrations/`."""
