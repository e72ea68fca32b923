"""Labelling: rounds and their content (candidates, tasks, gold answers, open and frozen),
the queue that hands tasks out, submissions (rankings and corrections) and the annotators'
quality."""
