"""What annotators meet over HTTP: the pages, the annotator API, its serializers, parsers and
authentication."""
