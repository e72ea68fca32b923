"""The loop: a round started and its candidates generated, AI labels, held-out evaluation,
training and its gate, and deployment of a version to the server."""
