"""`dqe-cir serve`: the HTTP search API and its page. routes (the FastAPI app), models (request and
response schemas), settings (environment variables), backend (encoder + Qdrant + CIRSearch of one
process), guard (body cap, per-request metrics), metrics (Prometheus). Nothing is imported here, so that
reading the settings does not load FastAPI."""
