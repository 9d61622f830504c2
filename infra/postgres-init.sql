-- Prefect's own database beside grounding's; grounding's migrations create the vector and pg_trgm extensions.
CREATE DATABASE prefect;
