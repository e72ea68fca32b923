"""The annotation app: the data model (models.py), the admin registration (admin.py), the URLs,
and its rooms, from the bottom up: rules, jobs, labeling, data, loop, web, administration,
worker, management (tests/test_layout.py holds the order)."""
