"""The collision study pipeline: design → train → measure → entries (docs/study/preregistration.md)."""
