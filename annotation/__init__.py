"""The annotation app: data model, annotator pages, REST API, admin and export."""
