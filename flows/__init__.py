"""Prefect flows: thin tasks over grounding's functions. Deployments are declared in prefect.yaml."""
