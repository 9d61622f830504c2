"""Running grounding as a service: serve (the Prefect server, pools and workers) and status (what the app
shows: repositories, snapshots, index versions, eval and training runs); later the HTTP API."""
