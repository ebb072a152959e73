"""The organization service's tables and queries; migrations live in `migrations/`."""
